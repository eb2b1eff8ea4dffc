//! Request paths as intentions see them and as the application receives them.
//!
//! A rule on `/admin` must not be dodged by `/admin/../admin`, `/%61dmin` or
//! `/./admin`, so every path is put in one canonical form before it is matched, and the
//! request is forwarded with that same form: what was authorized is what arrives
//! (RFC 3986 §6.2.2). Percent-encoded unreserved characters are decoded, other escapes
//! keep their meaning and get upper-case hex (`%2f` and `%2F` are one path; an encoded
//! slash is never turned into a separator), and dot segments are removed. A path that
//! would climb above the root is refused rather than clamped: no honest client sends
//! one. A backslash is a separator, as in Envoy's normalization.
//!
//! On the inbound side the `mesh` entry's request normalization
//! ([`RequestNormalization`], `docs/consul-semantics.md#request-normalization`) decides
//! more, in Envoy's order ([`normalize_with`]): escaped slashes (`%2F`, `%5C`) first
//! (kept, refused, or unescaped and then forwarded or redirected to), then the RFC 3986
//! form above (unless `InsecureDisablePathNormalization`), then runs of slashes merged
//! (`MergeSlashes`). With the defaults `//admin` and `/%2Fadmin` are not `/admin`: a
//! backend that merges slashes or decodes `%2F` would read them as `/admin`.

use std::borrow::Cow;

use ferrule_control::normalization::{
    EscapedSlashesAction, RequestNormalization, UnderscoresAction,
};
use http::HeaderMap;

/// Why a request path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path holds an escaped slash")]
    EscapedSlash,
}

/// What the inbound side does with a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Match and forward with this path.
    Path(Cow<'a, str>),
    /// Answer 307 with this path in `Location` (`UNESCAPE_AND_REDIRECT` found an escaped
    /// slash).
    Redirect(String),
}

/// `path` as `settings` want it, in Envoy's order: escaped slashes, RFC 3986, merged
/// slashes.
pub fn normalize_with<'a>(
    path: &'a str,
    settings: &RequestNormalization,
) -> Result<Normalized<'a>, PathError> {
    if path == "*" {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    let action = settings.path_with_escaped_slashes_action.effective();
    let mut redirect = false;
    let mut path = Cow::Borrowed(path);
    if action != EscapedSlashesAction::KeepUnchanged
        && let Some(unescaped) = unescape_slashes(&path)
    {
        match action {
            EscapedSlashesAction::RejectRequest => return Err(PathError::EscapedSlash),
            EscapedSlashesAction::UnescapeAndRedirect => redirect = true,
            _ => {}
        }
        path = Cow::Owned(unescaped);
    }
    if !settings.insecure_disable_path_normalization {
        path = match path {
            Cow::Borrowed(p) => normalize(p)?,
            Cow::Owned(p) => Cow::Owned(normalize(&p)?.into_owned()),
        };
    }
    if settings.merge_slashes && path.contains("//") {
        path = Cow::Owned(merge_slashes(&path));
    }
    Ok(if redirect {
        Normalized::Redirect(path.into_owned())
    } else {
        Normalized::Path(path)
    })
}

/// Applies `HeadersWithUnderscoresAction` before intentions see the headers: drops
/// every header whose name holds `_` (`DROP_HEADER`), or says the request must be
/// refused (`REJECT_REQUEST`, `true`). Header names are lower case here whatever the
/// caller sent, so this is the one check both HTTP versions need.
pub fn underscores(headers: &mut HeaderMap, action: UnderscoresAction) -> bool {
    if action == UnderscoresAction::Allow {
        return false;
    }
    let named: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    if named.is_empty() {
        return false;
    }
    if action == UnderscoresAction::RejectRequest {
        return true;
    }
    for name in named {
        tracing::debug!(header = %name, "header with an underscore dropped");
        headers.remove(name);
    }
    false
}

/// `%2F` and `%5C`, in either case, as the characters they escape; `None` when there is
/// none.
fn unescape_slashes(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let escaped_at = |i: usize| -> Option<char> {
        match (bytes.get(i + 1)?, bytes.get(i + 2)?) {
            (b'2', b'f' | b'F') => Some('/'),
            (b'5', b'c' | b'C') => Some('\\'),
            _ => None,
        }
    };
    if !(0..bytes.len()).any(|i| bytes[i] == b'%' && escaped_at(i).is_some()) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(c) = escaped_at(i)
        {
            out.push(c);
            i += 3;
            continue;
        }
        // Only ASCII is ever skipped over, so `i` stays on a character boundary.
        let c = path[i..].chars().next().unwrap_or_default();
        out.push(c);
        i += c.len_utf8().max(1);
    }
    Some(out)
}

/// Runs of `/` as one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The canonical form of a request path (without its query string). Borrowed when the
/// path is canonical already, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        // The asterisk form of `OPTIONS *`: no path to normalize.
        return Ok(Cow::Borrowed(path));
    }
    let path: Cow<'_, str> = if path.contains('\\') {
        Cow::Owned(path.replace('\\', "/"))
    } else {
        Cow::Borrowed(path)
    };
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = if path.contains('%') {
        Cow::Owned(decode_unreserved(&path)?)
    } else {
        path
    };
    if !has_dot_segment(&decoded) {
        return Ok(decoded);
    }
    remove_dot_segments(&decoded).map(Cow::Owned)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        let b = hi << 4 | lo;
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

/// RFC 3986 §5.2.4 for an absolute path, except that `..` at the root is an error.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            other => out.push(other),
        }
        // A path ending in a dot segment names a directory: keep its trailing slash.
        if i == last && (segment == "." || segment == "..") {
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/api/v1/users",
            "/a//b",
            "/a/b/",
            "/.well-known/x",
            "/a.b/c..d",
            "*",
        ] {
            let got = normalize(path).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{path} was copied");
            assert_eq!(got, path);
        }
    }

    #[test]
    fn every_spelling_of_a_path_has_one_form() {
        let cases = [
            ("/admin/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%41DMIN", "/ADMIN"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a//../b", "/a/b"),
            ("/%7euser", "/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2F..%2Fadmin", "/a%2F..%2Fadmin"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/x%00y", "/x%00y"),
            ("/..a/b..", "/..a/b.."),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn paths_above_the_root_and_bad_escapes_are_refused() {
        for path in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/a/%2E%2E/..",
        ] {
            assert_eq!(normalize(path), Err(PathError::AboveRoot), "{path}");
        }
        for path in ["/%", "/%4", "/%zz", "/a%g0"] {
            assert_eq!(normalize(path), Err(PathError::BadEscape), "{path}");
        }
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    fn settings(disable: bool, merge: bool, escaped: EscapedSlashesAction) -> RequestNormalization {
        RequestNormalization {
            insecure_disable_path_normalization: disable,
            merge_slashes: merge,
            path_with_escaped_slashes_action: escaped,
            ..RequestNormalization::default()
        }
    }

    #[test]
    fn a_backslash_is_a_separator() {
        assert_eq!(normalize("/a\\..\\admin").as_deref(), Ok("/admin"));
    }

    #[test]
    fn the_mesh_settings_apply_in_envoys_order() {
        use EscapedSlashesAction::*;
        let path = |p: &str| Ok(Normalized::Path(Cow::Owned(p.to_owned())));
        let redirect = |p: &str| Ok(Normalized::Redirect(p.to_owned()));
        let default = RequestNormalization::default();
        let cases = [
            // Today's behaviour: neither spelling is `/admin`.
            ("//admin", default, path("//admin")),
            ("/%2Fadmin", default, path("/%2Fadmin")),
            ("/%2fadmin", default, path("/%2Fadmin")),
            (
                "//admin",
                settings(false, true, KeepUnchanged),
                path("/admin"),
            ),
            (
                "/a///b//",
                settings(false, true, KeepUnchanged),
                path("/a/b/"),
            ),
            (
                "/%2fadmin",
                settings(false, false, UnescapeAndForward),
                path("//admin"),
            ),
            (
                "/%2Fadmin",
                settings(false, true, UnescapeAndForward),
                path("/admin"),
            ),
            (
                "/x/..%2F..%2Fadmin",
                settings(false, true, UnescapeAndForward),
                Err(PathError::AboveRoot),
            ),
            (
                "/a/..%5Cadmin",
                settings(false, true, UnescapeAndForward),
                path("/admin"),
            ),
            (
                "/%2fadmin",
                settings(false, true, UnescapeAndRedirect),
                redirect("/admin"),
            ),
            (
                "/%2Fadmin",
                settings(false, true, RejectRequest),
                Err(PathError::EscapedSlash),
            ),
            (
                "/admin",
                settings(false, true, RejectRequest),
                path("/admin"),
            ),
            (
                "/%2Fadmin",
                settings(false, true, ImplementationSpecificDefault),
                path("/%2Fadmin"),
            ),
            // Normalization off: the raw path, even one that would be refused.
            (
                "/a/../%61dmin",
                settings(true, false, KeepUnchanged),
                path("/a/../%61dmin"),
            ),
            (
                "/../%zz",
                settings(true, false, KeepUnchanged),
                path("/../%zz"),
            ),
            ("//a//b", settings(true, true, KeepUnchanged), path("/a/b")),
        ];
        for (input, settings, want) in cases {
            let got = normalize_with(input, &settings);
            let got = got.map(|n| match n {
                Normalized::Path(p) => Normalized::Path(Cow::Owned(p.into_owned())),
                other => other,
            });
            assert_eq!(got, want, "{input} with {settings:?}");
        }
    }

    #[test]
    fn headers_with_underscores_are_kept_dropped_or_refused() {
        let headers = || {
            let mut h = HeaderMap::new();
            h.insert("x_user", "admin".parse().unwrap());
            h.insert("x-user", "guest".parse().unwrap());
            h
        };
        let mut allowed = headers();
        assert!(!underscores(&mut allowed, UnderscoresAction::Allow));
        assert_eq!(allowed.len(), 2);
        let mut dropped = headers();
        assert!(!underscores(&mut dropped, UnderscoresAction::DropHeader));
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped["x-user"], "guest");
        assert!(underscores(
            &mut headers(),
            UnderscoresAction::RejectRequest
        ));
        let mut clean = HeaderMap::new();
        clean.insert("x-user", "guest".parse().unwrap());
        assert!(!underscores(&mut clean, UnderscoresAction::RejectRequest));
    }

    proptest::proptest! {
        #[test]
        fn normalizing_is_idempotent_and_never_panics(path in "/[a-zA-Z0-9%./_~-]{0,40}") {
            if let Ok(once) = normalize(&path) {
                let twice = normalize(&once).unwrap();
                proptest::prop_assert_eq!(&twice, &once);
                proptest::prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
