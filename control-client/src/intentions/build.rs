//! Building the model from Consul's JSON: `service-intentions` config entries (files,
//! `/v1/config`) or the `/v1/connect/intentions/match` answer (`crate::api::intentions`).
//!
//! Everything Consul's servers check is checked here, once, so one bad entry refuses the
//! document; sources are normalized as Consul normalizes them (inherited namespace and
//! partition), L7 permissions compiled, and what this proxy cannot enforce turned into
//! denies.

use std::collections::HashSet;

use regex::{Regex, RegexBuilder};

use super::error::{IntentionsError, Invalid, PermissionInvalid};
use super::order::precedence;
use super::{
    Action, Destination, HeaderMatch, HeaderTest, HttpMatch, Intention, Intentions, NamePattern,
    PathMatch, Permission, Rule, Source, Target, Unenforced, WILDCARD, or_default,
};
use crate::api::intentions as wire;
use crate::identity::DEFAULT;

/// Bounds the memory one compiled pattern may take; a config entry is not trusted to be
/// small.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// The methods Consul's server accepts in `HTTP.Methods` (`isValidHTTPMethod`).
const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

impl Intentions {
    /// Builds the model from `service-intentions` config entries. The whole document is
    /// validated as Consul's server validates it (so one bad entry refuses the document,
    /// whichever service it is for); only the entries that cover `destination` (`Name` its
    /// name or `*`, namespace its namespace or `*`, same partition) become rules.
    pub fn from_config_entries(
        entries: &[wire::ServiceIntentionsEntry],
        destination: Destination,
        default_action: Action,
    ) -> Result<Intentions, IntentionsError> {
        let destination = destination.normalized()?;
        let mut rules = config_entry_rules(entries)?;
        rules.retain(|rule| rule.target.covers(&destination));
        Ok(Intentions::sorted(destination, default_action, rules))
    }

    /// Builds the model from the list `/v1/connect/intentions/match?by=destination` returned
    /// for the destination. The list's order and precedences are not relied on.
    pub fn from_match(
        list: Vec<wire::Intention>,
        destination: Destination,
        default_action: Action,
    ) -> Result<Intentions, IntentionsError> {
        let destination = destination.normalized()?;
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(list.len());
        for (index, ixn) in list.iter().enumerate() {
            let match_err = |problem| IntentionsError::Match {
                index,
                intention: format!(
                    "{}/{} => {}/{}",
                    ixn.source_ns, ixn.source_name, ixn.destination_ns, ixn.destination_name
                ),
                problem,
            };
            let rule = from_wire_intention(ixn).map_err(match_err)?;
            if !seen.insert((rule.source.clone(), rule.target.clone())) {
                return Err(match_err(Invalid::DuplicateSource));
            }
            rules.push(rule);
        }
        Ok(Intentions::sorted(destination, default_action, rules))
    }
}

/// Checks a `service-intentions` document without building it for a destination: what a
/// file source does before accepting a new file.
pub fn validate_config_entries(
    entries: &[wire::ServiceIntentionsEntry],
) -> Result<(), IntentionsError> {
    config_entry_rules(entries).map(|_| ())
}

/// Every rule of every entry, in input order.
fn config_entry_rules(
    entries: &[wire::ServiceIntentionsEntry],
) -> Result<Vec<Intention>, IntentionsError> {
    let mut targets = HashSet::new();
    let mut rules = Vec::new();
    for entry in entries {
        let label = entry_label(entry);
        let entry_err = |problem| IntentionsError::Entry {
            entry: label.clone(),
            problem,
        };
        if entry.name.is_empty() {
            return Err(entry_err(Invalid::Missing("Name")));
        }
        if !entry.kind.is_empty() && entry.kind != wire::KIND {
            return Err(entry_err(Invalid::Kind(entry.kind.clone())));
        }
        let target = target(
            or_default(&entry.partition),
            or_default(&entry.namespace),
            &entry.name,
        )
        .map_err(entry_err)?;
        if !targets.insert(target.clone()) {
            return Err(entry_err(Invalid::DuplicateEntry));
        }
        if entry.sources.is_empty() {
            return Err(entry_err(Invalid::NoSources));
        }
        let entry_jwt = jwt_required(entry.jwt.as_ref());
        let mut sources = HashSet::new();
        for (index, src) in entry.sources.iter().enumerate() {
            let source_err = |problem| IntentionsError::Source {
                entry: label.clone(),
                index,
                name: if src.name.is_empty() {
                    "unnamed".to_owned()
                } else {
                    src.name.clone()
                },
                problem,
            };
            let ixn = from_source(src, &target, entry_jwt).map_err(source_err)?;
            if !sources.insert(ixn.source.clone()) {
                return Err(source_err(Invalid::DuplicateSource));
            }
            rules.push(ixn);
        }
    }
    Ok(rules)
}

fn entry_label(entry: &wire::ServiceIntentionsEntry) -> String {
    let partition = or_default(&entry.partition);
    let prefix = if partition == DEFAULT {
        String::new()
    } else {
        format!("{partition}/")
    };
    format!("{prefix}{}/{}", or_default(&entry.namespace), entry.name)
}

fn name_pattern(field: &'static str, value: &str) -> Result<NamePattern, Invalid> {
    if value == WILDCARD {
        Ok(NamePattern::Any)
    } else if value.contains(WILDCARD) {
        Err(Invalid::PartialWildcard {
            field,
            value: value.to_owned(),
        })
    } else {
        Ok(NamePattern::Exact(value.to_owned()))
    }
}

fn no_wildcard(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.contains(WILDCARD) {
        return Err(Invalid::WildcardNotAllowed(field));
    }
    Ok(())
}

/// `*/web` would be a pattern no precedence row describes; Consul rejects it.
pub(super) fn ns_and_name(
    namespace: &str,
    name: &str,
) -> Result<(NamePattern, NamePattern), Invalid> {
    let namespace = name_pattern("Namespace", namespace)?;
    let name = name_pattern("Name", name)?;
    if let (NamePattern::Any, NamePattern::Exact(exact)) = (&namespace, &name) {
        return Err(Invalid::ExactAfterWildcardNamespace(exact.clone()));
    }
    Ok((namespace, name))
}

fn target(partition: &str, namespace: &str, name: &str) -> Result<Target, Invalid> {
    no_wildcard("Partition", partition)?;
    let (namespace, name) = ns_and_name(namespace, name)?;
    Ok(Target {
        partition: partition.to_owned(),
        namespace,
        name,
    })
}

fn source(
    peer: &str,
    sameness_group: &str,
    partition: &str,
    namespace: &str,
    name: &str,
) -> Result<Source, Invalid> {
    if name.is_empty() {
        return Err(Invalid::Missing("Name"));
    }
    let (namespace, name) = ns_and_name(namespace, name)?;
    no_wildcard("Partition", partition)?;
    no_wildcard("Peer", peer)?;
    no_wildcard("SamenessGroup", sameness_group)?;
    Ok(Source {
        peer: peer.to_owned(),
        sameness_group: sameness_group.to_owned(),
        partition: partition.to_owned(),
        namespace,
        name,
    })
}

fn from_source(
    src: &wire::SourceIntention,
    target: &Target,
    entry_jwt: bool,
) -> Result<Intention, Invalid> {
    if !src.peer.is_empty() && !src.partition.is_empty() {
        return Err(Invalid::Exclusive("Peer", "Partition"));
    }
    if !src.sameness_group.is_empty() && !src.partition.is_empty() {
        return Err(Invalid::Exclusive("SamenessGroup", "Partition"));
    }
    if !src.sameness_group.is_empty() && !src.peer.is_empty() {
        return Err(Invalid::Exclusive("SamenessGroup", "Peer"));
    }
    // Consul's normalize: local sources inherit the destination's namespace (unless it is
    // `*`) and partition; peered and sameness-group sources get only a default namespace.
    let (partition, namespace) = if !src.peer.is_empty() || !src.sameness_group.is_empty() {
        ("", or_default(&src.namespace))
    } else {
        let namespace = match (&src.namespace[..], &target.namespace) {
            ("", NamePattern::Exact(ns)) => ns.as_str(),
            ("", NamePattern::Any) => DEFAULT,
            (ns, _) => ns,
        };
        (or_default_to(&src.partition, &target.partition), namespace)
    };
    let source = source(
        &src.peer,
        &src.sameness_group,
        partition,
        namespace,
        &src.name,
    )?;
    check_type(&src.source_type)?;
    build(
        source,
        target.clone(),
        &src.action,
        &src.permissions,
        entry_jwt,
        "",
    )
}

fn from_wire_intention(ixn: &wire::Intention) -> Result<Intention, Invalid> {
    if ixn.destination_name.is_empty() {
        return Err(Invalid::Missing("DestinationName"));
    }
    let remote = !ixn.source_peer.is_empty() || !ixn.source_sameness_group.is_empty();
    let partition = if remote {
        ""
    } else {
        or_default(&ixn.source_partition)
    };
    let source = source(
        &ixn.source_peer,
        &ixn.source_sameness_group,
        partition,
        or_default(&ixn.source_ns),
        &ixn.source_name,
    )?;
    let target = target(
        or_default(&ixn.destination_partition),
        or_default(&ixn.destination_ns),
        &ixn.destination_name,
    )?;
    check_type(&ixn.source_type)?;
    let jwt = jwt_required(ixn.jwt.as_ref());
    build(source, target, &ixn.action, &ixn.permissions, jwt, &ixn.id)
}

fn or_default_to<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() { fallback } else { s }
}

fn check_type(source_type: &str) -> Result<(), Invalid> {
    if !source_type.is_empty() && source_type != "consul" {
        return Err(Invalid::Type(source_type.to_owned()));
    }
    Ok(())
}

/// A requirement is there when it names at least one provider; anything else that is not
/// an object is unreadable and treated as a requirement, so it fails closed.
fn jwt_required(jwt: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    match jwt {
        None | Some(Value::Null) => false,
        Some(Value::Object(requirement)) => match requirement.get("Providers") {
            None | Some(Value::Null) => false,
            Some(Value::Array(providers)) => !providers.is_empty(),
            Some(_) => true,
        },
        Some(_) => true,
    }
}

fn build(
    source: Source,
    target: Target,
    action: &str,
    permissions: &[wire::IntentionPermission],
    jwt: bool,
    id: &str,
) -> Result<Intention, Invalid> {
    let (rule, any_permission_jwt) = written_rule(&target, action, permissions)?;
    let precedence = precedence(&source, &target);
    let unenforced = if !source.sameness_group.is_empty() {
        Some(Unenforced::SamenessGroup)
    } else if jwt || any_permission_jwt {
        Some(Unenforced::Jwt)
    } else {
        None
    };
    let display = describe(&source, &target, id, precedence, &rule, unenforced);
    let rule = match (rule, unenforced, jwt) {
        // A permission's own JWT was handled in `permission`; these cover the whole rule.
        (rule, None, _) | (rule, Some(Unenforced::Jwt), false) => rule,
        (rule, Some(_), _) => never_allow(rule),
    };
    Ok(Intention {
        source,
        target,
        precedence,
        rule,
        unenforced,
        display,
    })
}

/// The rule as written: an action (L4) or permissions (L7), never both; and whether a
/// permission carried its own JWT requirement.
fn written_rule(
    target: &Target,
    action: &str,
    permissions: &[wire::IntentionPermission],
) -> Result<(Rule, bool), Invalid> {
    if permissions.is_empty() {
        if action.is_empty() {
            return Err(Invalid::MissingAction);
        }
        return Ok((
            Rule::Action(action.parse().map_err(Invalid::Action)?),
            false,
        ));
    }
    if !action.is_empty() {
        return Err(Invalid::ActionWithPermissions);
    }
    if !target.namespace.is_exact() || !target.name.is_exact() {
        return Err(Invalid::PermissionsOnWildcardDestination);
    }
    let mut any_jwt = false;
    let mut out = Vec::with_capacity(permissions.len());
    for (index, perm) in permissions.iter().enumerate() {
        let (perm, perm_jwt) =
            permission(perm).map_err(|problem| Invalid::Permission { index, problem })?;
        any_jwt |= perm_jwt;
        out.push(perm);
    }
    Ok((Rule::Permissions(out), any_jwt))
}

fn never_allow(rule: Rule) -> Rule {
    match rule {
        Rule::Action(_) => Rule::Action(Action::Deny),
        Rule::Permissions(perms) => Rule::Permissions(
            perms
                .into_iter()
                .map(|p| Permission {
                    action: Action::Deny,
                    http: p.http,
                })
                .collect(),
        ),
    }
}

fn describe(
    source: &Source,
    target: &Target,
    id: &str,
    precedence: u32,
    rule: &Rule,
    unenforced: Option<Unenforced>,
) -> String {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!("ID: {id}, ")
    };
    let detail = match rule {
        Rule::Action(action) => format!("Action: {}", action.as_str().to_ascii_uppercase()),
        Rule::Permissions(perms) => format!("Permissions: {}", perms.len()),
    };
    let note = match unenforced {
        None => "",
        Some(Unenforced::Jwt) => ", JWT not enforced: allow => deny",
        Some(Unenforced::SamenessGroup) => ", sameness group not enforced: allow => deny",
    };
    format!("{source} => {target} ({id}Precedence: {precedence}, {detail}{note})")
}

/// Returns the permission and whether it carried a JWT requirement (its allow is then
/// already a deny).
fn permission(perm: &wire::IntentionPermission) -> Result<(Permission, bool), PermissionInvalid> {
    if perm.action.is_empty() {
        return Err(PermissionInvalid::MissingAction);
    }
    let action: Action = perm.action.parse().map_err(PermissionInvalid::Action)?;
    let http = perm.http.as_ref().ok_or(PermissionInvalid::MissingHttp)?;
    let path = path_match(http)?;
    let headers = http
        .header
        .iter()
        .enumerate()
        .map(|(index, hdr)| header(index, hdr))
        .collect::<Result<Vec<_>, _>>()?;
    let methods = methods(&http.methods)?;
    if path.is_none() && headers.is_empty() && methods.is_empty() {
        return Err(PermissionInvalid::EmptyHttp);
    }
    let jwt = jwt_required(perm.jwt.as_ref());
    let action = if jwt { Action::Deny } else { action };
    Ok((
        Permission {
            action,
            http: HttpMatch {
                path,
                methods,
                headers,
            },
        },
        jwt,
    ))
}

/// At most one of `PathExact`, `PathPrefix`, `PathRegex`; the first two absolute.
fn path_match(
    http: &wire::IntentionHttpPermission,
) -> Result<Option<PathMatch>, PermissionInvalid> {
    let paths = [&http.path_exact, &http.path_prefix, &http.path_regex];
    if paths.iter().filter(|p| !p.is_empty()).count() > 1 {
        return Err(PermissionInvalid::MultiplePaths);
    }
    for (field, value) in [
        ("PathExact", &http.path_exact),
        ("PathPrefix", &http.path_prefix),
    ] {
        if !value.is_empty() && !value.starts_with('/') {
            return Err(PermissionInvalid::RelativePath {
                field,
                value: value.clone(),
            });
        }
    }
    Ok(if !http.path_exact.is_empty() {
        Some(PathMatch::Exact(http.path_exact.clone()))
    } else if !http.path_prefix.is_empty() {
        Some(PathMatch::Prefix(http.path_prefix.clone()))
    } else if !http.path_regex.is_empty() {
        Some(PathMatch::Regex(full_match_regex(
            "PathRegex",
            &http.path_regex,
        )?))
    } else {
        None
    })
}

/// Upper-cased, each one of Consul's methods, none twice.
fn methods(listed: &[String]) -> Result<Vec<String>, PermissionInvalid> {
    let mut methods: Vec<String> = Vec::with_capacity(listed.len());
    for method in listed {
        let method = method.to_ascii_uppercase();
        if !HTTP_METHODS.contains(&method.as_str()) {
            return Err(PermissionInvalid::Method(method));
        }
        if methods.contains(&method) {
            return Err(PermissionInvalid::DuplicateMethod(method));
        }
        methods.push(method);
    }
    Ok(methods)
}

fn header(
    index: usize,
    hdr: &wire::IntentionHttpHeaderPermission,
) -> Result<HeaderMatch, PermissionInvalid> {
    if hdr.name.is_empty() {
        return Err(PermissionInvalid::HeaderName(index));
    }
    let strings = [
        &hdr.exact,
        &hdr.prefix,
        &hdr.suffix,
        &hdr.contains,
        &hdr.regex,
    ];
    let tests = usize::from(hdr.present) + strings.iter().filter(|s| !s.is_empty()).count();
    if tests != 1 {
        return Err(PermissionInvalid::HeaderTests {
            index,
            name: hdr.name.clone(),
        });
    }
    if hdr.ignore_case && (hdr.present || !hdr.regex.is_empty()) {
        return Err(PermissionInvalid::HeaderIgnoreCase {
            index,
            name: hdr.name.clone(),
        });
    }
    Ok(HeaderMatch {
        name: hdr.name.to_ascii_lowercase(),
        test: header_test(index, hdr)?,
        invert: hdr.invert,
        ignore_case: hdr.ignore_case,
    })
}

/// The one test `header` found set; with `IgnoreCase`, its string lower-cased once here.
fn header_test(
    index: usize,
    hdr: &wire::IntentionHttpHeaderPermission,
) -> Result<HeaderTest, PermissionInvalid> {
    let fold = |s: &str| {
        if hdr.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        }
    };
    Ok(if hdr.present {
        HeaderTest::Present
    } else if !hdr.exact.is_empty() {
        HeaderTest::Exact(fold(&hdr.exact))
    } else if !hdr.prefix.is_empty() {
        HeaderTest::Prefix(fold(&hdr.prefix))
    } else if !hdr.suffix.is_empty() {
        HeaderTest::Suffix(fold(&hdr.suffix))
    } else if !hdr.contains.is_empty() {
        HeaderTest::Contains(fold(&hdr.contains))
    } else {
        HeaderTest::Regex(full_match_regex(
            &format!("Header[{index}].Regex"),
            &hdr.regex,
        )?)
    })
}

/// Envoy matches these as RE2 full matches. The pattern is compiled on its own first:
/// wrapping an unbalanced pattern such as `x)|(.*` would otherwise yield a valid but far
/// wider regex.
fn full_match_regex(field: &str, pattern: &str) -> Result<Regex, PermissionInvalid> {
    let compile = |p: &str| {
        RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| PermissionInvalid::Regex {
                field: field.to_owned(),
                error: e.to_string(),
            })
    };
    compile(pattern)?;
    compile(&format!(r"\A(?:{pattern})\z"))
}
