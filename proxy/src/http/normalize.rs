//! Request paths as intentions see them and as the application receives them.
//!
//! A rule on `/admin` must not be dodged by `/admin/../admin`, `/%61dmin` or
//! `/./admin`, so every path is put in one canonical form before it is matched, and the
//! request is forwarded with that same form: what was authorized is what arrives
//! (RFC 3986 §6.2.2). Percent-encoded unreserved characters are decoded, other escapes
//! keep their meaning and get upper-case hex (`%2f` and `%2F` are one path; an encoded
//! slash is never turned into a separator), and dot segments are removed. A path that
//! would climb above the root is refused rather than clamped: no honest client sends
//! one.

use std::borrow::Cow;

/// Why a request path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// The canonical form of a request path (without its query string). Borrowed when the
/// path is canonical already, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        // The asterisk form of `OPTIONS *`: no path to normalize.
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = if path.contains('%') {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
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
