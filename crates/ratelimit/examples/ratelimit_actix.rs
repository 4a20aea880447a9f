//! A small actix-web service limited per user and per client address, as an
//! outside service would embed `sofiia-ratelimit`.
//!
//! ```text
//! cargo run -p sofiia-ratelimit --example ratelimit_actix --all-features
//! curl -i -H 'X-User: alice' http://127.0.0.1:8090/hello
//! ```
//!
//! With `REDIS_URL` set (and the `redis` feature) the quotas are shared by
//! every instance on that Redis; otherwise they live in this process.
//! `USER_QUOTA` and `CLIENT_QUOTA` take `N/s`, `N/min` or `N/h`.

use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use sofiia_core_domain::SystemClock;
use sofiia_ratelimit::actix::{TooManyRequests, insert_headers};
use sofiia_ratelimit::{Charge, DynRateLimiter, MemoryRateLimiter, Quota, RateLimitError};

struct Limits {
    limiter: Arc<DynRateLimiter>,
    user: Quota,
    client: Quota,
}

/// A quota from the environment; a value that does not parse stops the
/// process, naming the variable, rather than falling back silently.
fn quota(var: &str, default: &str) -> Result<Quota, Box<dyn std::error::Error>> {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    Quota::parse(&text).map_err(|e| format!("{var}: {e}").into())
}

fn limiter() -> Arc<DynRateLimiter> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        if let Ok(conn) = sofiia_ratelimit::RedisConnection::open(&url) {
            return Arc::new(sofiia_ratelimit::RedisRateLimiter::new(conn, "example:"));
        }
        eprintln!("REDIS_URL is not a Redis URL; limiting in memory");
    }
    Arc::new(MemoryRateLimiter::new(Arc::new(SystemClock), 100_000))
}

async fn hello(req: HttpRequest, limits: web::Data<Limits>) -> HttpResponse {
    let user = req
        .headers()
        .get("X-User")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let client = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let charges = [
        Charge::new("user", user.clone(), limits.user),
        Charge::new("client", client, limits.client),
    ];
    let decision = match limits.limiter.check(&charges).await {
        Ok(decision) => decision,
        // Fail closed: an unreachable limiter must not lift every quota.
        Err(RateLimitError::Unavailable { .. }) => {
            return HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "1"))
                .finish();
        }
        Err(_) => return HttpResponse::InternalServerError().finish(),
    };
    if let Some(refusal) = TooManyRequests::new(decision.clone()) {
        return refusal.error_response();
    }
    let mut response = HttpResponse::Ok();
    insert_headers(&mut response, &decision);
    response.body(format!("hello, {user}\n"))
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limits = web::Data::new(Limits {
        limiter: limiter(),
        user: quota("USER_QUOTA", "20/min")?,
        client: quota("CLIENT_QUOTA", "60/min")?,
    });
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
    eprintln!("listening on {bind}");
    HttpServer::new(move || {
        App::new()
            .app_data(limits.clone())
            .route("/hello", web::get().to(hello))
    })
    .bind(bind)?
    .run()
    .await?;
    Ok(())
}
