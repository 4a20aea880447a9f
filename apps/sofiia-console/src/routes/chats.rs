//! Chats and their messages.

use actix_web::http::header::LOCATION;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slog::o;
use sofiia_core_domain::{ChatId, ChatTitle, NewChat, NodeId};

use super::{ListQuery, PageBody};
use crate::auditor::Event;
use crate::problem::ApiError;
use crate::request::{LogChatId, Operator, RequestMeta};
use crate::state::AppState;
use crate::telemetry::flow_event;
use sofiia_audit_store::Outcome;

/// The cursor scope of the chat list.
const CHATS_SCOPE: &str = "chats";

/// The cursor scope of one chat's messages: a cursor of one chat is refused
/// by another's list.
fn messages_scope(chat: &ChatId) -> String {
    format!("messages:{chat}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateChat {
    id: Option<String>,
    title: Option<String>,
    node: Option<String>,
}

pub(super) async fn create(
    req: HttpRequest,
    operator: Operator,
    state: web::Data<AppState>,
    body: web::Json<CreateChat>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let id = match body.id {
        Some(id) => ChatId::new(id)?,
        None => ChatId::new(format!("chat-{}", uuid::Uuid::now_v7().simple()))?,
    };
    let title = body.title.map(ChatTitle::new).transpose()?;
    let node = match body.node {
        Some(node) => {
            let node = NodeId::new(node)?;
            if !state.router.knows(&node) {
                return Err(sofiia_router_client::RouterError::UnknownNode { node }.into());
            }
            node
        }
        None => state.router.default_node().clone(),
    };
    let chat = state
        .chat_index
        .create_chat(NewChat {
            id,
            title,
            node,
            created_at: state.clock.now(),
        })
        .await?;
    req.extensions_mut().insert(LogChatId(chat.id.to_string()));
    state
        .auditor
        .record(
            &RequestMeta::of(&req),
            Event::new(
                operator.0.as_str(),
                "chat.create",
                chat.id.as_str(),
                Outcome::Ok,
            )
            .status(201)
            .node(chat.node.as_str()),
        )
        .await?;
    flow_event(
        &state.logger,
        &req,
        "chat",
        o!("action" => "create", "node" => chat.node.to_string(), "status" => 201),
    );
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/api/chats/{}", chat.id)))
        .json(chat))
}

pub(super) async fn list(
    req: HttpRequest,
    _operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page_req = query.page_request(CHATS_SCOPE)?;
    let page = state.chat_index.list_chats(&page_req).await?;
    log_page(
        &state,
        &req,
        "chats",
        &page_req,
        page.items.len(),
        page.next.is_some(),
    );
    Ok(HttpResponse::Ok().json(PageBody::new(page, CHATS_SCOPE)))
}

pub(super) async fn get(
    _operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ChatId::new(path.into_inner())?;
    match state.chat_index.get_chat(&id).await? {
        Some(chat) => Ok(HttpResponse::Ok().json(chat)),
        None => Err(ApiError::not_found(format!("no chat with id {id}"))),
    }
}

pub(super) async fn messages(
    req: HttpRequest,
    _operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = ChatId::new(path.into_inner())?;
    let scope = messages_scope(&id);
    let page_req = query.page_request(&scope)?;
    let page = state.chat_index.list_messages(&id, &page_req).await?;
    log_page(
        &state,
        &req,
        "messages",
        &page_req,
        page.items.len(),
        page.next.is_some(),
    );
    Ok(HttpResponse::Ok().json(PageBody::new(page, &scope)))
}

fn log_page(
    state: &AppState,
    req: &HttpRequest,
    list: &'static str,
    page_req: &sofiia_core_domain::PageRequest,
    items: usize,
    has_next: bool,
) {
    flow_event(
        &state.logger,
        req,
        "pagination",
        o!(
            "list" => list,
            "status" => 200,
            "limit" => page_req.limit.get(),
            "cursor" => page_req.after.is_some(),
            "items" => items,
            "has_next" => has_next,
        ),
    );
}
