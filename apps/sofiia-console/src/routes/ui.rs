//! The operator web console: `GET /` and its assets under `/ui/`, compiled
//! into the binary (`apps/sofiia-console/web`: plain HTML, CSS and ES
//! modules, no build step), so the page works offline on a private network
//! and loads nothing from any other host.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles
//! and requests only from this origin, no inline script, no framing),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
//! Assets are revalidated on each load (`Cache-Control: no-cache` with an
//! `ETag` of their content), so an upgraded console never serves a stale
//! page against a newer API.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest as _, Sha256};

use crate::problem::ApiError;

/// The policy of the page and its assets.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../web/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/main.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/send.js", JS),
    asset!("js/sse.js", JS),
    asset!("js/views/audit.js", JS),
    asset!("js/views/chat.js", JS),
    asset!("js/views/chats.js", JS),
    asset!("js/views/signin.js", JS),
];

/// Each asset's `ETag`: a strong validator from its content.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// Registers `GET /` and `GET /ui/{path}`.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(page)))
        .service(web::resource("/ui/{path:.+}").route(web::get().to(asset)));
}

async fn page(req: HttpRequest) -> HttpResponse {
    serve(&req, 0)
}

async fn asset(req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner();
    // The page itself lives at `/`; `/ui/index.html` is not a second copy.
    ASSETS
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, a)| a.path == path)
        .map(|(i, _)| serve(&req, i))
        .ok_or_else(|| ApiError::not_found(format!("no asset /ui/{path}")))
}

fn serve(req: &HttpRequest, index: usize) -> HttpResponse {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        });
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ));
    if fresh {
        return res.finish();
    }
    res.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every module the page imports is served: a file added under `web/`
    /// and imported must be listed in [`ASSETS`].
    #[test]
    fn every_imported_module_is_an_asset() {
        let served: HashSet<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap_or_default();
            let dir = asset.path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split('"').nth(1) else {
                    continue;
                };
                let resolved = resolve(dir, spec);
                assert!(
                    served.contains(resolved.as_str()),
                    "{} imports {spec} ({resolved}), which is not served",
                    asset.path
                );
            }
        }
    }

    fn resolve(dir: &str, spec: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for piece in spec.split('/') {
            match piece {
                "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        parts.join("/")
    }

    #[test]
    fn the_page_loads_only_served_files_from_this_origin() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        for attr in ["src=\"", "href=\""] {
            for link in page.split(attr).skip(1) {
                let url = link.split('"').next().unwrap_or_default();
                if url.starts_with('#') {
                    continue;
                }
                let path = url.strip_prefix("/ui/");
                assert!(
                    path.is_some_and(|p| ASSETS.iter().any(|a| a.path == p)),
                    "the page links {url}, not a served asset"
                );
            }
        }
    }
}
