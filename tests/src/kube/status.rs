//! API errors as the API server reports them: a `Status` object with an
//! HTTP code, a machine-readable `reason` and details.

use serde_json::{json, Value};

/// One failed request: becomes a `Status` body with HTTP status `code`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Value) -> ApiError {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    /// `nodes "n1" not found` (`resource` is the plural, e.g. `nodes`).
    pub fn not_found(resource: &str, name: &str) -> ApiError {
        let message = format!("{resource} \"{name}\" not found");
        ApiError::new(
            404,
            "NotFound",
            message,
            json!({"name": name, "kind": resource}),
        )
    }

    /// A path that names no resource of this server.
    pub fn no_such_path() -> ApiError {
        let message = "the server could not find the requested resource".to_string();
        ApiError::new(404, "NotFound", message, json!({}))
    }

    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        let message = format!("{resource} \"{name}\" already exists");
        ApiError::new(
            409,
            "AlreadyExists",
            message,
            json!({"name": name, "kind": resource}),
        )
    }

    /// A stale `resourceVersion` or `uid` precondition.
    pub fn conflict(resource: &str, name: &str, why: &str) -> ApiError {
        let message = format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}");
        ApiError::new(
            409,
            "Conflict",
            message,
            json!({"name": name, "kind": resource}),
        )
    }

    /// Validation failed for `field` of the object `kind` `name` (422).
    /// `detail` starts as the API server's field errors do ("Invalid
    /// value: …", "Forbidden: …", "Required value: …"), which gives the
    /// cause's reason.
    pub fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
        let cause = format!("{field}: {detail}");
        let message = format!("{kind} \"{name}\" is invalid: {cause}");
        let reason = match detail {
            d if d.starts_with("Forbidden") => "FieldValueForbidden",
            d if d.starts_with("Required value") => "FieldValueRequired",
            _ => "FieldValueInvalid",
        };
        let details = json!({"name": name, "kind": kind, "causes": [
            {"reason": reason, "message": detail, "field": field}
        ]});
        ApiError::new(422, "Invalid", message, details)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message.into(), Value::Null)
    }

    /// A resource version older than the history kept (410 Gone).
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message.into(), Value::Null)
    }

    /// A list or watch at a resource version the server has not reached.
    pub fn too_large_resource_version(wanted: u64, current: u64) -> ApiError {
        let message = format!("Too large resource version: {wanted}, current: {current}");
        let details = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
        ApiError::new(504, "Timeout", message, details)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized".to_string(), Value::Null)
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        let message =
            format!("the server does not allow this method on the requested resource ({method})");
        ApiError::new(405, "MethodNotAllowed", message, Value::Null)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        let message = format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})");
        ApiError::new(415, "UnsupportedMediaType", message, Value::Null)
    }

    /// The `Status` object sent as the body (and inside a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// The `Status` a successful DELETE answers with.
pub fn deleted(resource: &str, name: &str, uid: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": resource, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_is_the_api_servers() {
        let want = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "nodes \"n9\" not found", "reason": "NotFound",
            "details": {"name": "n9", "kind": "nodes"}, "code": 404,
        });
        assert_eq!(ApiError::not_found("nodes", "n9").to_status(), want);
    }

    #[test]
    fn statuses_without_details_have_no_details_field() {
        let status = ApiError::expired("too old resource version: 1 (5)").to_status();
        assert_eq!(status["code"], 410);
        assert_eq!(status["reason"], "Expired");
        assert!(status.get("details").is_none());
    }
}
