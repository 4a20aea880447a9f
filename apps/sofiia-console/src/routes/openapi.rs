//! The OpenAPI 3.1 document of the API, `GET /api/openapi.json`.
//!
//! It is made from the handlers' own types and attributes (utoipa), then
//! completed once at start with what every operation shares (the problem
//! documents of its errors, `X-Request-Id`, the security schemes) and with
//! what only the running console knows: the nodes a request may name.

use std::collections::BTreeMap;

use sofiia_core_domain::NodeId;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use super::{audit, chats, send, system};
use crate::problem::ProblemDocument;

/// A node a request may name: one of the configured nodes (the document
/// lists them).
pub(crate) struct ConfiguredNode;

impl PartialSchema for ConfiguredNode {
    fn schema() -> RefOr<Schema> {
        NodeId::schema()
    }
}

impl ToSchema for ConfiguredNode {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sofiia-console",
        description = "The operator console for the agent Sofiia: chats, idempotent and rate-limited sends to inference nodes, and the audit trail. Every error is an RFC 9457 problem document (`application/problem+json`); every answer carries `X-Request-Id`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        system::health,
        system::ready,
        system::metrics,
        system::openapi,
        chats::create,
        chats::list,
        chats::get,
        chats::messages,
        send::send,
        audit::read,
    ),
    components(schemas(ProblemDocument, ConfiguredNode)),
    tags(
        (name = "chats", description = "Chats, their messages, and sends. Needs an operator's bearer token."),
        (name = "audit", description = "The audit trail. Needs `X-Audit-Key`."),
        (name = "system", description = "Health, readiness, metrics and this document. Open."),
    ),
)]
struct ApiDoc;

/// The error answers of each operation, by operation id.
fn errors(operation: &str) -> &'static [u16] {
    match operation {
        "createChat" => &[400, 401, 409, 413, 415, 429, 503],
        "listChats" | "readAudit" => &[400, 401, 429, 503],
        "getChat" | "listMessages" => &[400, 401, 404, 429, 503],
        "sendMessage" => &[400, 401, 409, 413, 415, 422, 429, 502, 503, 504],
        "getReady" => &[503],
        _ => &[],
    }
}

fn description(status: u16) -> &'static str {
    match status {
        400 => {
            "The request is malformed: a path, query, header or body value breaks its rule (`field` names it), an unknown node, a cursor this console did not issue."
        }
        401 => "The credentials are missing or wrong.",
        404 => "No such chat.",
        409 => {
            "A chat with this id exists; or a send with this Idempotency-Key is still running (retry after `Retry-After`)."
        }
        413 => "The body is over 64 KiB.",
        415 => "The body is not `application/json`.",
        422 => "The Idempotency-Key was used for a different request (another chat or body).",
        429 => {
            "A quota is spent (`scope` names it, with the RateLimit fields), or too many refused credentials came from this address; retry after `Retry-After`."
        }
        502 => {
            "The node failed, could not be reached, or answered something that is not the node protocol."
        }
        503 => {
            "A store is unavailable or too slow (nothing was done), the audit trail cannot record the action, or the node answered and the exchange is not stored yet (the reply is kept; a retry with the key gets it once stored)."
        }
        504 => "The node did not answer in time.",
        _ => "An error.",
    }
}

fn header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(String::schema())
        .description(Some(description))
        .build()
}

fn problem_response(status: u16, bearer: bool) -> Response {
    let mut response = ResponseBuilder::new()
        .description(description(status))
        .content(
            crate::problem::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ProblemDocument")))
                .build(),
        );
    if status == 401 && bearer {
        response = response.header("WWW-Authenticate", header("`Bearer`."));
    }
    if matches!(status, 409 | 429 | 503) {
        response = response.header(
            "Retry-After",
            header("Seconds to wait before retrying (always on 429 and 503)."),
        );
    }
    if status == 429 {
        response = response
            .header("RateLimit-Policy", header("The quotas, on a spent quota."))
            .header("RateLimit", header("What remains of them."));
    }
    response.build()
}

/// The document of a console whose requests may name `nodes`.
pub fn document(nodes: &[NodeId]) -> Document {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An operator token: it decides the operator."))
                .build(),
        ),
    );
    components.security_schemes.insert(
        "audit_key".to_owned(),
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Audit-Key",
            "One of the keys of SOFIIA_AUDIT_KEYS.",
        ))),
    );
    components.schemas.insert(
        "ConfiguredNode".to_owned(),
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .description(Some("One of the nodes this console is configured with."))
                .enum_values(Some(nodes.iter().map(NodeId::as_str)))
                .build(),
        )),
    );

    let request_id = header("The request's id: the client's, if it sent a sane one.");
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let id = operation.operation_id.clone().unwrap_or_default();
            let bearer = operation
                .security
                .as_ref()
                .is_some_and(|s| serde_json::to_string(s).is_ok_and(|j| j.contains("bearer")));
            let responses: &mut BTreeMap<String, RefOr<Response>> =
                &mut operation.responses.responses;
            for &status in errors(&id) {
                responses.insert(
                    status.to_string(),
                    RefOr::T(problem_response(status, bearer)),
                );
            }
            for response in responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .insert("X-Request-Id".to_owned(), request_id.clone());
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_errors_and_the_nodes_are_listed() {
        let nodes = [NodeId::new("NODA1").unwrap(), NodeId::new("NODA2").unwrap()];
        let doc = serde_json::to_value(document(&nodes)).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let send = &doc["paths"]["/api/chats/{chat_id}/send"]["post"];
        for status in [
            "200", "400", "401", "409", "413", "415", "422", "429", "502", "503", "504",
        ] {
            let response = &send["responses"][status];
            assert!(response.is_object(), "send lacks {status}");
            assert!(response["headers"]["X-Request-Id"].is_object(), "{status}");
        }
        assert!(send["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
        assert!(send["responses"]["429"]["content"]["application/problem+json"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["ConfiguredNode"]["enum"],
            serde_json::json!(["NODA1", "NODA2"])
        );
        assert!(doc["components"]["securitySchemes"]["audit_key"].is_object());
        let audit = &doc["paths"]["/api/audit"]["get"];
        assert!(audit["responses"]["401"]["headers"]["WWW-Authenticate"].is_null());
        for path in [
            "/api/health",
            "/api/ready",
            "/metrics",
            "/api/openapi.json",
            "/api/chats",
            "/api/chats/{chat_id}",
            "/api/chats/{chat_id}/messages",
            "/api/chats/{chat_id}/send",
            "/api/audit",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is missing");
        }
    }
}
