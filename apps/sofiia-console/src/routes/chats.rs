//! Chats and their messages.

use actix_web::http::header::LOCATION;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slog::o;
use sofiia_core_domain::{Chat, ChatId, ChatTitle, Message, NewChat, NodeId};

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

/// A chat to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateChat {
    /// Its id; generated when absent.
    #[schema(value_type = Option<ChatId>)]
    id: Option<String>,
    /// Its title.
    #[schema(value_type = Option<ChatTitle>)]
    title: Option<String>,
    /// The node that answers its sends by default: one of the configured
    /// nodes; the default node when absent.
    #[schema(value_type = Option<super::openapi::ConfiguredNode>)]
    node: Option<String>,
}

/// Creates a chat.
#[utoipa::path(
    post,
    path = "/api/chats",
    operation_id = "createChat",
    tag = "chats",
    request_body = CreateChat,
    responses((status = 201, description = "The chat, created.", body = Chat,
        headers(("Location" = String, description = "The chat's URL.")))),
    security(("bearer" = [])),
)]
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

/// Lists chats, most recently active first.
#[utoipa::path(
    get,
    path = "/api/chats",
    operation_id = "listChats",
    tag = "chats",
    params(ListQuery),
    responses((status = 200, description = "A page of chats.", body = PageBody<Chat>)),
    security(("bearer" = [])),
)]
pub(super) async fn list(
    req: HttpRequest,
    _operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page_req = query.page_request(CHATS_SCOPE, &state.cursor_keys)?;
    let page = state.chat_index.list_chats(&page_req).await?;
    log_page(
        &state,
        &req,
        "chats",
        &page_req,
        page.items.len(),
        page.next.is_some(),
    );
    Ok(HttpResponse::Ok().json(PageBody::new(page, CHATS_SCOPE, &state.cursor_keys)))
}

/// Reads one chat.
#[utoipa::path(
    get,
    path = "/api/chats/{chat_id}",
    operation_id = "getChat",
    tag = "chats",
    params(("chat_id" = ChatId, Path, description = "The chat.")),
    responses((status = 200, description = "The chat.", body = Chat)),
    security(("bearer" = [])),
)]
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

/// Lists a chat's messages, newest first.
#[utoipa::path(
    get,
    path = "/api/chats/{chat_id}/messages",
    operation_id = "listMessages",
    tag = "chats",
    params(("chat_id" = ChatId, Path, description = "The chat."), ListQuery),
    responses((status = 200, description = "A page of messages.", body = PageBody<Message>)),
    security(("bearer" = [])),
)]
pub(super) async fn messages(
    req: HttpRequest,
    _operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = ChatId::new(path.into_inner())?;
    let scope = messages_scope(&id);
    let page_req = query.page_request(&scope, &state.cursor_keys)?;
    let page = state.chat_index.list_messages(&id, &page_req).await?;
    log_page(
        &state,
        &req,
        "messages",
        &page_req,
        page.items.len(),
        page.next.is_some(),
    );
    Ok(HttpResponse::Ok().json(PageBody::new(page, &scope, &state.cursor_keys)))
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
