//! Keys the gateway does not read, found in `.env` or the environment, for a warning at start: a
//! setting that silently does nothing is worse than one refused. The keys stonescriptdb-gateway 1.x
//! read and this gateway does not are named with what replaced them.

use std::collections::HashMap;

use super::keys;

/// Keys of stonescriptdb-gateway 1.x this gateway does not read, with why.
pub const RETIRED: &[(&str, &str)] = &[(
    "DATA_DIR",
    "no longer used: stored schemas live in the catalog database (CATALOG_DB), nothing is kept on disk",
)];

/// Prefixes that mark a variable of the environment as meant for this gateway (the environment holds
/// everything else too, so only these are checked there; `.env` is checked whole).
const OWN_PREFIXES: &[&str] = &["GATEWAY_", "CATALOG_", "PLATFORM_", "DEPLOY_", "CALL_", "STONESCRIPTDB_"];

/// Keys read by tools beside the gateway that often share its `.env`.
const ALSO_READ: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "PGPASSWORD"];

/// One key the gateway ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub key: String,
    /// `.env` or `environment`.
    pub source: &'static str,
    pub note: String,
}

fn note(key: &str) -> String {
    match RETIRED.iter().find(|(k, _)| *k == key) {
        Some((_, why)) => (*why).to_string(),
        None => "not a setting of this gateway; ignored (see --help for the keys)".to_string(),
    }
}

/// The keys of `dotenv` (the file's text) and `env` that the gateway does not read, sorted.
pub fn unknown_keys(dotenv: Option<&str>, env: &HashMap<String, String>) -> Vec<Unknown> {
    let mut out = Vec::new();
    let ignored = |k: &str| keys::find(k).is_some() || ALSO_READ.contains(&k);
    for line in dotenv.unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, _)) = line.split_once('=') else { continue };
        let k = k.trim();
        if !ignored(k) && !out.iter().any(|u: &Unknown| u.key == k) {
            out.push(Unknown { key: k.to_string(), source: ".env", note: note(k) });
        }
    }
    let mut env_keys: Vec<&String> = env
        .keys()
        .filter(|k| RETIRED.iter().any(|(r, _)| r == k) || OWN_PREFIXES.iter().any(|p| k.starts_with(p)))
        .filter(|k| !ignored(k))
        .collect();
    env_keys.sort();
    for k in env_keys {
        if !out.iter().any(|u| &u.key == k) {
            out.push(Unknown { key: k.clone(), source: "environment", note: note(k) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_data_dir_and_typos_are_named_and_known_keys_are_not() {
        let env: HashMap<String, String> =
            [("DATA_DIR", "/x"), ("GATEWAY_PORTT", "1"), ("GATEWAY_PORT", "1"), ("HOME", "/root")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let u = unknown_keys(Some("DB_HOST=x\nDATA_DIR=/opt/data\n# c\nRUST_LOG=info\nexport FOO_BAR=1\n"), &env);
        let keys: Vec<(&str, &str)> = u.iter().map(|x| (x.key.as_str(), x.source)).collect();
        assert_eq!(keys, [("DATA_DIR", ".env"), ("FOO_BAR", ".env"), ("GATEWAY_PORTT", "environment")]);
        assert!(u[0].note.contains("no longer used"));
        assert!(u[1].note.contains("not a setting"));
    }
}
