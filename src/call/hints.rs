//! Error messages for `/call` that say what to do: which functions exist when the called one does not
//! (same name with other arguments, or similar names), and which parameter a bad value was for.

use super::request::{Args, CallRequest};
use super::types::TypeRegistry;

/// Lists the functions of the call schemas, for [`not_found`]: (name, argument list as declared).
pub const FUNCTIONS_SQL: &str = "SELECT p.proname::text, pg_catalog.pg_get_function_arguments(p.oid) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = ANY($1::text[]) AND p.prokind = 'f' ORDER BY 1, 2 LIMIT 5000";

/// The most functions named in one message.
const MAX_SUGGESTIONS: usize = 3;

/// Edit distance between two short names (insertions, deletions, substitutions).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// How the call passed its arguments, in words.
fn given(req: &CallRequest) -> String {
    match &req.args {
        Args::Positional => match req.params.len() {
            0 => "no arguments".to_string(),
            1 => "1 positional argument".to_string(),
            n => format!("{n} positional arguments"),
        },
        Args::Named(names) => format!("the named arguments ({})", names.join(", ")),
    }
}

/// The message for a function PostgreSQL could not find, from what `FUNCTIONS_SQL` returned.
pub fn not_found(req: &CallRequest, schemas: &[String], found: &[(String, String)]) -> String {
    let f = &req.function;
    let place = if schemas.len() == 1 {
        format!("schema {}", schemas[0])
    } else {
        format!("schemas {} (CALL_SCHEMAS)", schemas.join(", "))
    };
    let same: Vec<String> = found.iter().filter(|(n, _)| **n == **f).map(|(n, a)| format!("{n}({a})")).collect();
    if !same.is_empty() {
        let shown: Vec<&str> = same.iter().take(MAX_SUGGESTIONS).map(String::as_str).collect();
        return format!(
            "function {f} exists in {place} but not for {}: it takes {}; check the number and names of the \
             arguments",
            given(req),
            shown.join(" or ")
        );
    }
    let lower = f.to_ascii_lowercase();
    let mut near: Vec<(usize, String)> = found
        .iter()
        .filter_map(|(n, a)| {
            let d = distance(&lower, n);
            let close =
                d <= (lower.len() / 4).max(2) || (lower.len() >= 4 && (n.contains(&lower) || lower.contains(n)));
            close.then(|| (d, format!("{n}({a})")))
        })
        .collect();
    near.sort();
    near.dedup();
    if near.is_empty() {
        return format!(
            "function {f} with {} does not exist in {place}; deploy it (POST /migrate) or check the name",
            given(req)
        );
    }
    let shown: Vec<String> = near.into_iter().take(MAX_SUGGESTIONS).map(|(_, s)| s).collect();
    format!("function {f} with {} does not exist in {place}; perhaps you meant {}", given(req), shown.join(" or "))
}

/// `'p_id' ($1, int4)` or `$2 (text)`: a parameter of the call, by name and position, with the type
/// PostgreSQL wants for it.
pub fn param_label(req: &CallRequest, i: usize, oid: u32, types: &TypeRegistry) -> String {
    let ty = types.get(oid).map(|t| t.name.clone()).unwrap_or_else(|| format!("type {oid}"));
    match &req.args {
        Args::Named(n) => format!("'{}' (${}, {ty})", n.get(i).map(String::as_str).unwrap_or("?"), i + 1),
        Args::Positional => format!("${} ({ty})", i + 1),
    }
}

/// The parameter a PostgreSQL error during Bind was about: its context reads
/// `unnamed portal parameter $N = '…'`. Zero-based.
pub fn bind_param_index(context: Option<&str>) -> Option<usize> {
    let c = context?;
    let rest = &c[c.find("portal parameter $")? + "portal parameter $".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().ok()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Value;

    fn req(function: &str, params: &str) -> CallRequest {
        let body = format!(r#"{{"platform":"p","function":"{function}","params":{params}}}"#);
        CallRequest::from_json(crate::json::parse(body.as_bytes()).unwrap()).unwrap()
    }

    fn found() -> Vec<(String, String)> {
        [
            ("get_todo_by_id", "p_todo_id integer, p_user_id integer"),
            ("list_todos", "p_user_id integer"),
            ("create_todo", "p_title text"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn a_misspelt_name_gets_the_nearest_functions() {
        let m = not_found(&req("get_todo", "[1, 2]"), &["public".into()], &found());
        assert!(m.contains("perhaps you meant get_todo_by_id(p_todo_id integer, p_user_id integer)"), "{m}");
        assert!(m.contains("2 positional arguments"), "{m}");
        let m = not_found(&req("list_todo", "[1]"), &["public".into()], &found());
        assert!(m.contains("perhaps you meant list_todos(p_user_id integer)"), "{m}");
        assert!(!m.contains("create_todo"), "{m}");
    }

    #[test]
    fn the_right_name_with_the_wrong_arguments_says_so() {
        let m = not_found(&req("list_todos", r#"{"user": 1}"#), &["public".into()], &found());
        assert!(
            m.contains("function list_todos exists in schema public but not for the named arguments (user)"),
            "{m}"
        );
        assert!(m.contains("it takes list_todos(p_user_id integer)"), "{m}");
    }

    #[test]
    fn nothing_alike_says_how_to_get_it() {
        let m = not_found(&req("zzz", "[]"), &["api".into(), "public".into()], &found());
        assert!(m.contains("does not exist in schemas api, public (CALL_SCHEMAS)"), "{m}");
        assert!(m.contains("POST /migrate"), "{m}");
        assert!(!m.contains("perhaps"), "{m}");
    }

    #[test]
    fn parameters_are_named_with_position_and_type() {
        let types = TypeRegistry::new();
        let r = req("f", r#"{"p_id": 1, "p_name": "x"}"#);
        assert_eq!(param_label(&r, 1, 25, &types), "'p_name' ($2, text)");
        let r = req("f", "[1]");
        assert_eq!(param_label(&r, 0, 23, &types), "$1 (int4)");
        assert_eq!(bind_param_index(Some("unnamed portal parameter $2 = '...'")), Some(1));
        assert_eq!(bind_param_index(Some("PL/pgSQL function f() line 3")), None);
        assert_eq!(bind_param_index(None), None);
        let _ = Value::Null;
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}
