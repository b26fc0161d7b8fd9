//! The small pages the gate answers with itself. No token and no claim value is ever
//! echoed; the reason code is stable and also sent as `X-Jwt-Gate-Reason`.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY};
use http::{Response, StatusCode};

use super::body::RespBody;

pub const REASON_HEADER: &str = "x-jwt-gate-reason";

/// An error page. `sign_in` adds a link back to GitLab's sign-in page.
pub fn page(
    status: StatusCode,
    reason: &'static str,
    detail: &str,
    sign_in: Option<&str>,
) -> Response<RespBody> {
    let title = match status.as_u16() {
        400 => "Bad request",
        401 => "Sign-in refused",
        405 => "Method not allowed",
        408 => "Request timeout",
        413 => "Request too large",
        414 => "URI too long",
        502 => "GitLab is unreachable",
        503 => "Sign-in temporarily unavailable",
        504 => "GitLab did not answer in time",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let link = sign_in.map_or(String::new(), |s| {
        format!("<p><a href=\"{}\">Back to sign in</a></p>", html_escape(s))
    });
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;background:#fafafa;color:#333;margin:0}}\
main{{max-width:34rem;margin:12vh auto;padding:2rem;background:#fff;border:1px solid #dbdbdb;border-radius:8px}}\
h1{{font-size:1.4rem;margin-top:0}}code{{background:#f0f0f0;padding:.1rem .3rem;border-radius:3px}}\
a{{color:#1f75cb}}</style></head>\n<body><main><h1>{title}</h1><p>{}</p>\
<p>Reason: <code id=\"reason\">{reason}</code> (HTTP {})</p>{link}</main></body></html>\n",
        html_escape(detail),
        status.as_u16(),
    );
    let mut resp = Response::new(RespBody::Full(Some(Bytes::from(html))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // a refused callback's URL may hold an unburned token: the "back to sign in" link
    // must not carry it away in Referer
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(REASON_HEADER, HeaderValue::from_static(reason));
    resp
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
