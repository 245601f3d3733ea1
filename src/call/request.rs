//! The `/call` request: `{platform, tenant_id, function, params}` validated into a [`CallRequest`], the
//! SQL text it prepares and the key its prepared statement is cached under.

use crate::error::{ApiError, Kind};
use std::borrow::Cow;
use std::sync::Arc;

use crate::json::{self, Member, Value};
use crate::security::names;

/// PostgreSQL's FUNC_MAX_ARGS: no function takes more arguments.
pub const MAX_PARAMS: usize = 100;

/// How arguments are passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `fn($1, $2, …)`.
    Positional,
    /// `fn(a => $1, b => $2)`; names in call order.
    Named(Vec<String>),
}

/// A validated call.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The platform as database names use it (lower-cased, other characters `_`). Shared, so that
    /// the per-function figures keep it without a copy.
    pub platform: Arc<str>,
    /// The tenant as database names use it (`None` for the main database).
    pub tenant: Option<String>,
    pub database: String,
    pub function: Arc<str>,
    pub args: Args,
    /// Argument values in `$n` order.
    pub params: Vec<Value>,
    /// Must run on the primary even when the function only reads (`"consistency": "primary"` or
    /// `X-Consistency: primary`; also set when a replica refused a write).
    pub primary: bool,
}

/// Reads a `consistency` value: `primary` (read your writes) or `any` (a replica may answer).
pub fn consistency_primary(v: &str) -> Result<bool, ApiError> {
    match v {
        "primary" => Ok(true),
        "any" => Ok(false),
        other => Err(invalid(format!(
            "'consistency' must be \"primary\" or \"any\", got '{}'",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(Kind::InvalidRequest, msg)
}

/// The members of a call body that matter, last one of a name winning (as [`Value::get`] does).
#[derive(Default)]
struct Fields<'a> {
    platform: Option<Member<'a>>,
    tenant: Option<Member<'a>>,
    function: Option<Member<'a>>,
    consistency: Option<Member<'a>>,
    params: Option<Value>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, key: &str, value: Member<'a>) {
        let slot = match key {
            "platform" => &mut self.platform,
            "tenant_id" => &mut self.tenant,
            "function" => &mut self.function,
            "consistency" => &mut self.consistency,
            "params" => {
                self.params = Some(match value {
                    Member::Str(s) => Value::String(s.into_owned()),
                    Member::Other(v) => v,
                });
                return;
            }
            _ => return,
        };
        *slot = Some(value);
    }
}

fn opt_string<'f>(value: &'f Option<Member<'_>>, key: &str) -> Result<Option<&'f str>, ApiError> {
    match value {
        None | Some(Member::Other(Value::Null)) => Ok(None),
        Some(Member::Str(s)) => Ok(Some(s)),
        // Numeric tenant ids are common in existing clients; accept their text.
        Some(Member::Other(Value::Number(n))) if key == "tenant_id" => Ok(Some(n)),
        Some(Member::Other(v)) => Err(invalid(format!("'{key}' must be a string, got {}", v.type_name()))),
    }
}

impl CallRequest {
    /// Reads a body straight from its bytes, building no tree for the members around `params`.
    /// `None` when the body is not a well-formed JSON object within `max_depth`: the caller's
    /// generic reader words that error.
    pub fn from_body(body: &[u8], max_depth: usize) -> Option<Result<CallRequest, ApiError>> {
        let mut fields = Fields::default();
        json::object_members(body, max_depth, |k, v| fields.set(&k, v)).ok()?;
        Some(Self::from_fields(fields))
    }

    /// Takes a parsed body apart: argument values are moved out, not copied.
    pub fn from_json(body: Value) -> Result<CallRequest, ApiError> {
        let mut fields = Fields::default();
        if let Value::Object(members) = body {
            for (k, v) in members {
                let v = match v {
                    Value::String(s) => Member::Str(Cow::Owned(s)),
                    other => Member::Other(other),
                };
                fields.set(&k, v);
            }
        }
        Self::from_fields(fields)
    }

    fn from_fields(fields: Fields<'_>) -> Result<CallRequest, ApiError> {
        let platform = opt_string(&fields.platform, "platform")?.ok_or_else(|| invalid("'platform' is required"))?;
        let platform = names::platform(platform)?;
        let tenant = opt_string(&fields.tenant, "tenant_id")?;
        let database = names::v1_database_of(&platform, tenant)?;
        let function = opt_string(&fields.function, "function")?.ok_or_else(|| invalid("'function' is required"))?;
        let primary = match opt_string(&fields.consistency, "consistency")? {
            Some(c) => consistency_primary(c)?,
            None => false,
        };
        if !names::is_function_name(function) {
            return Err(invalid(format!(
                "'function' must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes), got '{}'",
                function.chars().take(80).collect::<String>()
            )));
        }
        let params_value = fields.params;
        // Counted before anything else is done per parameter: the work below must not grow with a
        // hostile number of names.
        let count = match &params_value {
            Some(Value::Array(a)) => a.len(),
            Some(Value::Object(m)) => m.len(),
            _ => 0,
        };
        if count > MAX_PARAMS {
            return Err(invalid(format!(
                "at most {MAX_PARAMS} parameters are accepted (PostgreSQL's FUNC_MAX_ARGS), got {count}"
            )));
        }
        let (args, params) = match params_value {
            None | Some(Value::Null) => (Args::Positional, Vec::new()),
            Some(Value::Array(a)) => (Args::Positional, a),
            Some(Value::Object(members)) => {
                let mut names_: Vec<String> = Vec::with_capacity(members.len());
                let mut vals = Vec::with_capacity(members.len());
                for (k, v) in members {
                    if !names::is_function_name(&k) {
                        return Err(invalid(format!("parameter name '{k}' is not a lower-case identifier")));
                    }
                    // At most MAX_PARAMS names: comparing with each is cheap.
                    if names_.contains(&k) {
                        return Err(invalid(format!("parameter '{k}' is given twice")));
                    }
                    names_.push(k);
                    vals.push(v);
                }
                (Args::Named(names_), vals)
            }
            Some(v) => {
                return Err(invalid(format!("'params' must be an array or an object, got {}", v.type_name())));
            }
        };
        Ok(CallRequest {
            platform: platform.into(),
            tenant: tenant.filter(|t| !t.is_empty()).map(names::sanitize),
            database,
            function: function.into(),
            args,
            params,
            primary,
        })
    }

    /// What identifies the prepared statement on a connection: function, schema and argument shape.
    pub fn shape_key(&self, schema: &str) -> String {
        let mut k = String::with_capacity(self.function.len() + schema.len() + 16);
        self.write_shape_key(schema, &mut k);
        k
    }

    /// [`CallRequest::shape_key`] into `k` (cleared first), for a buffer kept from call to call.
    pub fn write_shape_key(&self, schema: &str, k: &mut String) {
        k.clear();
        k.push_str(schema);
        k.push('.');
        k.push_str(&self.function);
        match &self.args {
            Args::Positional => {
                use std::fmt::Write as _;
                let _ = write!(k, "/{}", self.params.len());
            }
            Args::Named(n) => {
                k.push('(');
                for (i, name) in n.iter().enumerate() {
                    if i > 0 {
                        k.push(',');
                    }
                    k.push_str(name);
                }
                k.push(')');
            }
        }
    }

    /// Turns a shape key in `k` into the key refined by the JSON kinds of the arguments, for
    /// overloaded functions where PostgreSQL needs declared parameter types to choose.
    pub fn push_kinds(&self, k: &mut String) {
        k.push('|');
        for v in &self.params {
            k.push_str(json_kind_type(v).1);
            k.push(',');
        }
    }

    /// `SELECT * FROM "schema"."fn"($1, …)` or with `name => $n`. Names were validated as identifiers.
    pub fn sql(&self, schema: &str) -> String {
        let mut s = format!("SELECT * FROM \"{schema}\".\"{}\"(", self.function);
        for i in 0..self.params.len() {
            if i > 0 {
                s.push_str(", ");
            }
            if let Args::Named(n) = &self.args {
                s.push('"');
                s.push_str(&n[i]);
                s.push_str("\" => ");
            }
            s.push('$');
            s.push_str(&(i + 1).to_string());
        }
        s.push(')');
        s
    }

    /// Declared parameter types guessed from the JSON values, used only when PostgreSQL reported the
    /// call ambiguous (SQLSTATE 42725) with unspecified types.
    pub fn declared_types(&self) -> Vec<u32> {
        self.params.iter().map(|v| json_kind_type(v).0).collect()
    }
}

/// A JSON value's natural PostgreSQL type: (oid, name). `null` stays unknown (0).
fn json_kind_type(v: &Value) -> (u32, &'static str) {
    match v {
        Value::Null => (0, "unknown"),
        Value::Bool(_) => (16, "bool"),
        Value::Number(n) => {
            if n.contains(['.', 'e', 'E']) {
                (1700, "numeric")
            } else if n.parse::<i32>().is_ok() {
                (23, "int4")
            } else if n.parse::<i64>().is_ok() {
                (20, "int8")
            } else {
                (1700, "numeric")
            }
        }
        Value::String(_) => (25, "text"),
        Value::Array(_) | Value::Object(_) => (3802, "jsonb"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn req(s: &str) -> Result<CallRequest, ApiError> {
        CallRequest::from_json(parse(s.as_bytes()).unwrap())
    }

    /// 80,000 distinct names (869 KB, under the body limit) once took seconds of duplicate checks on
    /// the event loop; the count is refused before any per-name work.
    #[test]
    fn a_huge_params_object_is_refused_by_its_count_first() {
        let members: Vec<(String, Value)> = (0..80_000).map(|i| (format!("p{i}"), Value::Null)).collect();
        let body = Value::Object(vec![
            ("platform".into(), Value::String("p".into())),
            ("function".into(), Value::String("f".into())),
            ("params".into(), Value::Object(members)),
        ]);
        let e = CallRequest::from_json(body).unwrap_err();
        assert!(e.message.contains("got 80000"), "{}", e.message);
        let e =
            req(&format!(r#"{{"platform":"p","function":"f","params":[{}]}}"#, vec!["1"; 101].join(","))).unwrap_err();
        assert!(e.message.contains("at most 100"), "{}", e.message);
    }

    #[test]
    fn databases() {
        assert_eq!(req(r#"{"platform":"Acme","function":"f"}"#).unwrap().database, "acme_main");
        assert_eq!(req(r#"{"platform":"acme","tenant_id":"","function":"f"}"#).unwrap().database, "acme_main");
        assert_eq!(req(r#"{"platform":"acme","tenant_id":null,"function":"f"}"#).unwrap().database, "acme_main");
        assert_eq!(req(r#"{"platform":"acme","tenant_id":"T-1","function":"f"}"#).unwrap().database, "acme_t_1");
        assert_eq!(req(r#"{"platform":"acme","tenant_id":7,"function":"f"}"#).unwrap().database, "acme_7");
    }

    #[test]
    fn sql_and_keys() {
        let r = req(r#"{"platform":"a","function":"get_user","params":[1,"x"]}"#).unwrap();
        assert_eq!(r.sql("public"), r#"SELECT * FROM "public"."get_user"($1, $2)"#);
        assert_eq!(r.shape_key("public"), "public.get_user/2");
        let mut typed = r.shape_key("public");
        r.push_kinds(&mut typed);
        assert_eq!(typed, "public.get_user/2|int4,text,");
        let r = req(r#"{"platform":"a","function":"f","params":{"b":1,"a":2}}"#).unwrap();
        assert_eq!(r.sql("public"), r#"SELECT * FROM "public"."f"("b" => $1, "a" => $2)"#);
        assert_eq!(r.shape_key("public"), "public.f(b,a)");
    }

    #[test]
    fn refusals() {
        for s in [
            r#"{"function":"f"}"#,
            r#"{"platform":"a"}"#,
            r#"{"platform":"a","function":"pg_catalog.version"}"#,
            r#"{"platform":"a","function":"f; drop table x"}"#,
            r#"{"platform":"a","function":"F"}"#,
            r#"{"platform":"a","function":"f","params":"x"}"#,
            r#"{"platform":"a","function":"f","params":{"A b":1}}"#,
            r#"{"platform":1,"function":"f"}"#,
        ] {
            assert_eq!(req(s).unwrap_err().kind, Kind::InvalidRequest, "{s}");
        }
    }
}
