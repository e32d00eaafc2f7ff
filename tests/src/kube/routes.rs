//! The REST paths the emulator serves: discovery, Nodes (list, watch,
//! get, create, update, patch, delete, and the `/status` subresource) and
//! reading a Pod. Every failure is a `Status` object.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::patch::{json_patch, merge_patch, node_list_strategy, strategic_merge_patch};
use super::selector::{FieldSelector, LabelSelector, Selector};
use super::status::{deleted, ApiError};
use super::store::Part;
use super::watch::{self, WatchRequest};
use super::Shared;

pub type Body = BoxBody<Bytes, Infallible>;

/// The largest request body accepted (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The Kubernetes version `/version` reports.
pub const SERVER_VERSION: (&str, &str) = ("1", "33");

/// Answers one authenticated request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match route(&shared, req).await {
        Ok(resp) => resp,
        Err(e) => json_response(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e.to_status(),
        ),
    }
}

/// The 401 an unauthenticated request gets.
pub fn unauthorized() -> Response<Body> {
    json_response(
        StatusCode::UNAUTHORIZED,
        &ApiError::unauthorized().to_status(),
    )
}

/// Whether a path is served without a token (as anonymous access to these
/// is allowed on a default API server).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["version"], &Method::GET) => Ok(ok(&version())),
        (["healthz" | "livez" | "readyz"], &Method::GET) => Ok(text("ok")),
        (["api"], &Method::GET) => Ok(ok(&api_versions(&shared.server_address))),
        (["apis"], &Method::GET) => Ok(ok(
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        )),
        (["api", "v1"], &Method::GET) => Ok(ok(&api_resources())),
        (["openapi", "v2"], &Method::GET) => Ok(openapi_v2(&header(&req, ACCEPT))),
        (["api", "v1", "nodes"], _) => nodes(shared, req, &query).await,
        (["api", "v1", "nodes", name], _) => node(shared, req, name, Part::Main, &query).await,
        (["api", "v1", "nodes", name, "status"], _) => {
            node(shared, req, name, Part::Status, &query).await
        }
        (["api", "v1", "namespaces", ns, "pods", name], &Method::GET) => {
            Ok(ok(&shared.store().pod(ns, name)?))
        }
        (["api", "v1", "namespaces", _, "pods", _], m) => {
            Err(ApiError::method_not_allowed(m.as_str()))
        }
        _ => Err(ApiError::no_such_path()),
    }
}

/// `/api/v1/nodes`: list, watch, create.
async fn nodes(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    match *req.method() {
        Method::GET if query.flag("watch") => watch_nodes(shared, query),
        Method::GET => list_nodes(shared, query).map(|list| ok(&list)),
        Method::POST => {
            query.refuse_dry_run()?;
            let body = read_json(req).await?;
            let node = shared.write(|s| s.create_node(body))?;
            Ok(json_response(StatusCode::CREATED, &node))
        }
        ref m => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// `/api/v1/nodes/{name}` and its `/status`: get, update, patch, delete.
async fn node(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    name: &str,
    part: Part,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    if *req.method() != Method::GET {
        query.refuse_dry_run()?;
    }
    match *req.method() {
        Method::GET => Ok(ok(&shared.store().node(name)?)),
        Method::PUT => {
            let body = read_json(req).await?;
            let node = shared.write(|s| s.update_node(name, part, |_| Ok(body)))?;
            Ok(ok(&node))
        }
        Method::PATCH => {
            let content_type = header(&req, CONTENT_TYPE);
            let patch = read_json(req).await?;
            let node = shared.write(|s| {
                s.update_node(name, part, |old| apply_patch(old, &content_type, &patch))
            })?;
            Ok(ok(&node))
        }
        Method::DELETE if part == Part::Main => {
            let options = read_json_or_empty(req).await?;
            let pre = &options["preconditions"];
            let (uid, rv) = (pre["uid"].as_str(), pre["resourceVersion"].as_str());
            let last = shared.write(|s| s.delete_node(name, uid, rv))?;
            Ok(ok(&deleted("nodes", name, &last["metadata"]["uid"])))
        }
        ref m => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

/// The patch formats by `Content-Type`.
fn apply_patch(old: &Value, content_type: &str, patch: &Value) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let bad = |e: super::patch::PatchError| ApiError::bad_request(e.to_string());
    match media {
        "application/merge-patch+json" => {
            let mut new = old.clone();
            merge_patch(&mut new, patch);
            Ok(new)
        }
        "application/strategic-merge-patch+json" => {
            strategic_merge_patch(old, patch, node_list_strategy).map_err(bad)
        }
        "application/json-patch+json" => json_patch(old, patch).map_err(bad),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// A NodeList at the latest version, one page of it with `limit`.
fn list_nodes(shared: &Shared, query: &Query) -> Result<Value, ApiError> {
    let selector = query.selector()?;
    let store = shared.store();
    let current = store.resource_version();
    let (list_rv, after) = match query.get("continue") {
        Some(token) => decode_continue(token, store.compacted())?,
        None => (check_list_version(query, current)?, String::new()),
    };
    let mut items: Vec<Value> = store
        .nodes(&selector)
        .into_iter()
        .filter(|n| super::meta::name_of(n) > after.as_str())
        .map(strip_type)
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(limit) = query.limit()? {
        if items.len() > limit {
            let rest = items.split_off(limit);
            let last = super::meta::name_of(items.last().expect("limit > 0")).to_string();
            metadata["continue"] = json!(encode_continue(list_rv, &last));
            metadata["remainingItemCount"] = json!(rest.len());
        }
    }
    Ok(json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items}))
}

/// The version a list is served at: the latest, which is never older
/// than a given `resourceVersion`; an exact older one cannot be served.
fn check_list_version(query: &Query, current: u64) -> Result<u64, ApiError> {
    let Some(rv) = query.get("resourceVersion").filter(|v| !v.is_empty()) else {
        return Ok(current);
    };
    let rv: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
    if rv > current {
        return Err(ApiError::too_large_resource_version(rv, current));
    }
    if query.get("resourceVersionMatch") == Some("Exact") && rv != current {
        return Err(ApiError::expired(format!(
            "too old resource version: {rv} ({current}); this server lists only the latest version"
        )));
    }
    Ok(current)
}

/// List items carry no `kind`/`apiVersion` (the list does), as the API
/// server sends them.
fn strip_type(mut node: Value) -> Value {
    if let Some(obj) = node.as_object_mut() {
        obj.remove("kind");
        obj.remove("apiVersion");
    }
    node
}

fn encode_continue(rv: u64, last: &str) -> String {
    BASE64.encode(
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last}\u{0}")}).to_string(),
    )
}

/// The list version and the name to continue after.
fn decode_continue(token: &str, compacted: u64) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = BASE64.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    if rv < compacted {
        return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
    }
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}

fn watch_nodes(shared: &Arc<Shared>, query: &Query) -> Result<Response<Body>, ApiError> {
    let from = match query.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    let timeout = match query.get("timeoutSeconds") {
        None => None,
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
        })?)),
    };
    let req = WatchRequest {
        from,
        selector: query.selector()?,
        timeout,
        bookmarks: query.flag("allowWatchBookmarks"),
        send_initial_events: query.flag("sendInitialEvents"),
    };
    let body = watch::start(Arc::clone(shared), req);
    let mut resp = Response::new(body.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect().await;
    body.map(|b| b.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = header(&req, CONTENT_TYPE);
    if content_type.contains("protobuf") || content_type.contains("yaml") {
        return Err(ApiError::unsupported_media_type(&content_type));
    }
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// DELETE's optional `DeleteOptions` body.
async fn read_json_or_empty(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = read_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn version() -> Value {
    let (major, minor) = SERVER_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn api_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
            {"name": "nodes/status", "singularName": "", "namespaced": false, "kind": "Node",
             "verbs": ["get", "patch", "update"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get"], "shortNames": ["po"]},
        ],
    })
}

/// An OpenAPI v2 document with no definitions. kubectl fetches it to
/// validate what it sends (`kubectl create` fails without one) and skips
/// validating a kind the document does not define, so an empty document
/// leaves validation to the server, as it is here.
fn openapi_v2(accept: &str) -> Response<Body> {
    let (swagger, title, version) = (
        "2.0",
        "Kubernetes",
        format!("v{}.{}.0", SERVER_VERSION.0, SERVER_VERSION.1),
    );
    if !accept.contains("protobuf") {
        let doc = json!({"swagger": swagger, "info": {"title": title, "version": version}, "paths": {}, "definitions": {}});
        return ok(&doc);
    }
    // gnostic's openapi_v2.Document: swagger (field 1) and info (field 2:
    // title 1, version 2), length-delimited.
    let field = |n: u8, bytes: &[u8]| [&[n << 3 | 2, bytes.len() as u8][..], bytes].concat();
    let info = [field(1, title.as_bytes()), field(2, version.as_bytes())].concat();
    let doc = [field(1, swagger.as_bytes()), field(2, &info)].concat();
    let mut resp = Response::new(Full::new(Bytes::from(doc)).boxed());
    let media = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    resp
}

fn ok(v: &Value) -> Response<Body> {
    json_response(StatusCode::OK, v)
}

fn text(s: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).expect("JSON values serialize");
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `1` and `true` are true, as the API server parses booleans.
    fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "true" | "True" | "TRUE" | "t" | "T")
        )
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        let bad = |e: super::selector::SelectorError| ApiError::bad_request(e.to_string());
        Ok(Selector {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or("")).map_err(bad)?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or("")).map_err(bad)?,
        })
    }

    /// `limit`; 0 or absent is no limit.
    fn limit(&self) -> Result<Option<usize>, ApiError> {
        match self.get("limit") {
            None | Some("" | "0") => Ok(None),
            Some(l) => l
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}"))),
        }
    }

    /// Dry runs would need a second code path that writes nothing; no client
    /// of this emulator asks for one, so refusing beats writing.
    fn refuse_dry_run(&self) -> Result<(), ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(()),
            Some(_) => Err(ApiError::bad_request(
                "dryRun is not supported by this emulator",
            )),
        }
    }
}

/// `%XX` escapes and `+` as space (form encoding, which clients use).
fn percent_decode(s: &str) -> String {
    let (bytes, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            {
                Some(hex) => {
                    out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = Query::parse("labelSelector=role%3Dworker%2Czone+in+%28a%29&watch=1&x=%zz&y=%4");
        assert_eq!(q.get("labelSelector"), Some("role=worker,zone in (a)"));
        assert!(q.flag("watch"));
        assert!(!q.flag("allowWatchBookmarks"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("y"), Some("%4"));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, "node-b");
        assert_eq!(
            decode_continue(&token, 0).unwrap(),
            (42, "node-b".to_string())
        );
        assert_eq!(decode_continue(&token, 43).unwrap_err().code, 410);
        assert_eq!(decode_continue("!!", 0).unwrap_err().code, 400);
    }
}
