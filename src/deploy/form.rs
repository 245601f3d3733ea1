//! The multipart form of `/register`, `/migrate` and schema uploads: fields in any order, the archive
//! under `schema` (or its alias `file`), flags as `true`/`false`/`1`/`0`.

use crate::error::{ApiError, Kind};
use crate::http::multipart::{self, MultipartLimits, Part};

/// The fields a deploy form may carry.
#[derive(Debug, Default)]
pub struct DeployForm {
    pub platform: Option<String>,
    pub tenant_id: Option<String>,
    pub schema_name: Option<String>,
    /// The server a new database goes to (see `GET /admin/servers`); placement chooses when absent.
    pub server: Option<String>,
    /// The uploaded archive bytes.
    pub archive: Option<Vec<u8>>,
    pub force: bool,
    pub dry_run: bool,
    pub reseed: bool,
}

fn flag(p: &Part<'_>) -> Result<bool, ApiError> {
    let t = p.text().map_err(|e| ApiError::new(Kind::InvalidRequest, e.message))?;
    match t.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => {
            Err(ApiError::new(Kind::InvalidRequest, format!("field '{}' must be true or false, got '{other}'", p.name)))
        }
    }
}

fn text(p: &Part<'_>) -> Result<String, ApiError> {
    p.text()
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::new(Kind::InvalidRequest, format!("field '{}' is not UTF-8 text", p.name)))
}

impl DeployForm {
    pub fn parse(content_type: &str, body: &[u8], max_parts: usize) -> Result<DeployForm, ApiError> {
        let boundary = multipart::boundary(content_type)
            .map_err(|e| ApiError::new(Kind::InvalidRequest, format!("bad multipart Content-Type: {}", e.message)))?;
        let limits = MultipartLimits { max_parts, ..MultipartLimits::default() };
        let parts = multipart::parse(body, boundary, &limits).map_err(|e| {
            let kind = if e.too_large { Kind::PayloadTooLarge } else { Kind::InvalidRequest };
            ApiError::new(kind, format!("malformed multipart body: {}", e.message))
        })?;
        let mut f = DeployForm::default();
        for p in &parts {
            match p.name {
                "platform" => f.platform = Some(text(p)?),
                "tenant_id" => f.tenant_id = Some(text(p)?).filter(|s| !s.is_empty()),
                "schema_name" | "name" => f.schema_name = Some(text(p)?),
                "server" => f.server = Some(text(p)?).filter(|s| !s.is_empty()),
                "schema" | "file" => {
                    if f.archive.is_some() {
                        return Err(ApiError::new(Kind::InvalidRequest, "more than one schema archive in the form"));
                    }
                    f.archive = Some(p.data.to_vec());
                }
                "force" => f.force = flag(p)?,
                "dry_run" => f.dry_run = flag(p)?,
                "reseed" => f.reseed = flag(p)?,
                // Unknown fields are ignored: older clients send extras such as `async`.
                _ => {}
            }
        }
        Ok(f)
    }

    pub fn require_platform(&self) -> Result<&str, ApiError> {
        self.platform
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::new(Kind::InvalidRequest, "form field 'platform' is required"))
    }

    pub fn require_archive(&self) -> Result<&[u8], ApiError> {
        self.archive.as_deref().ok_or_else(|| {
            ApiError::new(Kind::InvalidRequest, "form field 'schema' (the postgresql/ folder as tar.gz) is required")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_any_order() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.tgz\"\r\n\
Content-Type: application/gzip\r\n\r\n\x1f\x8b--XyZ not a delimiter\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"tenant_id\"\r\n\r\nt1\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"platform\"\r\n\r\nacme\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"force\"\r\n\r\ntrue\r\n--XyZ--\r\n";
        let f = DeployForm::parse("multipart/form-data; boundary=XyZ", body, 32).unwrap();
        assert_eq!(f.require_platform().unwrap(), "acme");
        assert_eq!(f.tenant_id.as_deref(), Some("t1"));
        assert_eq!(f.require_archive().unwrap(), b"\x1f\x8b--XyZ not a delimiter");
        assert!(f.force && !f.dry_run);
    }

    #[test]
    fn bad_flag_and_missing_fields() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"dry_run\"\r\n\r\nmaybe\r\n--b--\r\n";
        assert_eq!(
            DeployForm::parse("multipart/form-data; boundary=b", body, 32).unwrap_err().kind,
            Kind::InvalidRequest
        );
        let body = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n";
        let f = DeployForm::parse("multipart/form-data; boundary=b", body, 32).unwrap();
        assert!(f.require_platform().is_err() && f.require_archive().is_err());
    }
}
