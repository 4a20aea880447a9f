//! An order service whose `POST /orders` runs at most once per
//! `Idempotency-Key`, the way an outside service would embed this crate.
//!
//! ```text
//! cargo run -p sofiia-idempotency --example idempotency_actix --features actix
//! curl -i -X POST localhost:8080/orders -H 'Authorization: Bearer alice' \
//!      -H 'Idempotency-Key: order-0001' -d '{"item":42}'
//! ```
//!
//! The same command again answers the same order with
//! `Idempotent-Replayed: true`; another body with the same key answers 422.
//!
//! With `--features actix,redis` and `REDIS_URL` set, the keys live in Redis
//! and every instance started this way shares them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use sofiia_idempotency::actix::run_idempotent;
use sofiia_idempotency::{DynIdempotencyStore, Idempotency, MemoryIdempotencyStore};

struct Orders {
    next_id: AtomicU64,
}

async fn create_order(
    req: HttpRequest,
    body: web::Bytes,
    idempotency: web::Data<Idempotency>,
    orders: web::Data<Orders>,
) -> HttpResponse {
    // Keys are scoped per principal: take it from your authentication.
    let Some(principal) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return HttpResponse::Unauthorized().finish();
    };
    // Parse the body first: bad input is answered without touching a key.
    let Ok(order) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().body("the body must be JSON");
    };
    // The fingerprint covers the body; re-serialised, so whitespace and key
    // order of a retry do not make it a different request.
    let canonical = order.to_string();
    run_idempotent(
        &idempotency,
        principal,
        &req,
        canonical.as_bytes(),
        || async {
            // The side effect that must not happen twice.
            let id = orders.next_id.fetch_add(1, Ordering::SeqCst);
            HttpResponse::Created()
                .insert_header(("location", format!("/orders/{id}")))
                .json(serde_json::json!({ "id": id, "order": order }))
        },
    )
    .await
}

fn store() -> Arc<DynIdempotencyStore> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        use sofiia_idempotency::{RedisConnection, RedisIdempotencyStore};

        let conn = RedisConnection::open(&url).expect("a valid REDIS_URL");
        return Arc::new(RedisIdempotencyStore::new(conn, "orders-example:"));
    }
    // One process: keep up to 100 000 keys.
    Arc::new(MemoryIdempotencyStore::with_system_clock(100_000))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let idempotency = web::Data::new(Idempotency::new(
        store(),
        // Lease: longer than the slowest order creation.
        Duration::from_secs(30),
        // How long a client may retry and get the same answer.
        Duration::from_secs(24 * 60 * 60),
    ));
    let orders = web::Data::new(Orders {
        next_id: AtomicU64::new(1),
    });
    eprintln!("listening on http://{bind}");
    HttpServer::new(move || {
        App::new()
            .app_data(idempotency.clone())
            .app_data(orders.clone())
            .route("/orders", web::post().to(create_order))
    })
    .bind(bind)?
    .run()
    .await
}
