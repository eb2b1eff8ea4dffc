//! What the agent says about itself: its datacenter (`/v1/agent/self`) and the default
//! intention action, resolved as `docs/consul-semantics.md#intentions` describes: the
//! `--default-action` flag, else the agent's `default_intention_policy` (or its ACL
//! default policy, or allow with ACLs off), else, when the token cannot read the agent's
//! config, the `X-Consul-Default-ACL-Policy` header every answer carries.

use std::time::Duration;

use super::agent::{Agent, Event};
use super::failures::Failures;
use crate::api::agent_self::AgentSelf;
use crate::consul::http::{AgentClient, AgentError, DEFAULT_ACL_POLICY_HEADER, header_str};
use crate::consul::watch::{Meta, backoff};
use crate::intentions::Action;
use crate::model::DefaultAction;
use crate::publish::same_default;
use crate::telemetry::{Resource, record_update};

/// `/v1/agent/self` changes only when the agent's config is reloaded: re-read it now and
/// then, not with a blocking query (it has none).
const SELF_REFRESH: Duration = Duration::from_secs(300);
/// How long a one-shot request (`/v1/agent/self`, `/v1/agent/services`) may take.
pub(super) const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) const SOURCE_FLAG: &str = "--default-action";
pub(super) const SOURCE_INTENTION_POLICY: &str = "agent default_intention_policy";
pub(super) const SOURCE_ACL_POLICY: &str = "agent acl.default_policy (ACLs enabled)";
pub(super) const SOURCE_ACLS_OFF: &str = "agent has ACLs disabled (allow)";
pub(super) const SOURCE_HEADER: &str =
    "X-Consul-Default-ACL-Policy (no agent:read; default_intention_policy unknown)";

/// One read of `/v1/agent/self`.
pub(super) enum SelfAnswer {
    Ok(Box<AgentSelf>),
    /// 4xx, typically 403 without `agent:read`; with the header policy if it came along.
    Refused(AgentError, Option<Action>),
    Failed(AgentError),
}

/// The agent's settings as far as they are known, and the default action they give.
pub(super) struct AgentSettings {
    /// `--default-action`: wins over what the agent says.
    flag: Option<Action>,
    /// The agent's datacenter (`""` until `/v1/agent/self` answers).
    pub(super) datacenter: String,
    from_self: Option<DefaultAction>,
    /// `/v1/agent/self` cannot be read (or does not say): the header decides.
    self_refused: bool,
    header_policy: Option<Action>,
    /// The default action in force.
    pub(super) default_action: Option<DefaultAction>,
}

impl AgentSettings {
    pub(super) fn new(flag: Option<Action>) -> AgentSettings {
        AgentSettings {
            flag,
            datacenter: String::new(),
            from_self: None,
            self_refused: false,
            header_policy: None,
            default_action: flag.map(|action| DefaultAction {
                action,
                source: SOURCE_FLAG,
            }),
        }
    }

    /// Whether `/v1/agent/self` needs reading at all (not with the flag).
    pub(super) fn needs_self(&self) -> bool {
        self.flag.is_none()
    }

    /// Takes an answer of `/v1/agent/self`; says whether the default action changed.
    pub(super) fn on_self(&mut self, answer: SelfAnswer, failures: &mut Failures) -> bool {
        match answer {
            SelfAnswer::Ok(me) => {
                record_update(Resource::Config, true);
                failures.recovered("agent self");
                self.datacenter = me.config.datacenter.clone();
                self.from_self = default_from_self(&me);
                let unreadable = self.from_self.is_none();
                if unreadable && !self.self_refused {
                    tracing::warn!(
                        "the agent's /v1/agent/self does not say its ACL default policy; using X-Consul-Default-ACL-Policy"
                    );
                }
                // Unreadable settings fall back to the header, like a refusal.
                self.self_refused = unreadable;
            }
            SelfAnswer::Refused(e, header) => {
                record_update(Resource::Config, false);
                if !self.self_refused {
                    tracing::warn!(error = %e, "cannot read /v1/agent/self (the token needs agent:read): the default intention action falls back to the agent's ACL default policy from X-Consul-Default-ACL-Policy, which ignores default_intention_policy; pass --default-action to pin it");
                }
                self.self_refused = true;
                self.from_self = None;
                if let Some(policy) = header {
                    self.header_policy = Some(policy);
                }
            }
            SelfAnswer::Failed(e) => {
                record_update(Resource::Config, false);
                if failures.started("agent self", &e.to_string()) {
                    tracing::warn!(error = %e, "cannot read /v1/agent/self; retrying");
                }
            }
        }
        self.resolve()
    }

    /// Takes the ACL policy header of any answer; says whether the default action changed.
    pub(super) fn on_meta(&mut self, meta: &Meta) -> bool {
        match meta
            .default_acl_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
        {
            Some(policy) if self.header_policy != Some(policy) => {
                self.header_policy = Some(policy);
                self.resolve()
            }
            _ => false,
        }
    }

    /// The flag, else what the agent's config says, else (when that cannot be read) the
    /// ACL default policy header. Says whether the action (not only its source) changed.
    fn resolve(&mut self) -> bool {
        let resolved = match (self.flag, &self.from_self) {
            (Some(action), _) => Some(DefaultAction {
                action,
                source: SOURCE_FLAG,
            }),
            (None, Some(from_self)) => Some(from_self.clone()),
            (None, None) if self.self_refused => self.header_policy.map(|action| DefaultAction {
                action,
                source: SOURCE_HEADER,
            }),
            (None, None) => None,
        };
        if same_default(&resolved, &self.default_action) {
            return false;
        }
        if let Some(d) = &resolved {
            tracing::info!(action = %d.action, source = d.source, "default intention action");
        }
        let action_changed =
            resolved.as_ref().map(|d| d.action) != self.default_action.as_ref().map(|d| d.action);
        self.default_action = resolved;
        action_changed
    }
}

pub(super) fn default_from_self(me: &AgentSelf) -> Option<DefaultAction> {
    if let Some(policy) = me.default_intention_policy() {
        return match policy.parse() {
            Ok(action) => Some(DefaultAction {
                action,
                source: SOURCE_INTENTION_POLICY,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the agent's default_intention_policy is not allow or deny");
                None
            }
        };
    }
    match me.acls_enabled() {
        Some(true) => me
            .acl_default_policy()
            .and_then(|p| p.parse().ok())
            .map(|action| DefaultAction {
                action,
                source: SOURCE_ACL_POLICY,
            }),
        Some(false) => Some(DefaultAction {
            action: Action::Allow,
            source: SOURCE_ACLS_OFF,
        }),
        None => None,
    }
}

/// Reads `/v1/agent/self` now and then (it has no blocking query).
pub(super) async fn self_loop(agent: Agent) {
    let mut failures = 0;
    loop {
        let answer = read_self(&agent.client).await;
        let delay = match &answer {
            SelfAnswer::Ok(_) | SelfAnswer::Refused(..) => {
                failures = 0;
                SELF_REFRESH
            }
            SelfAnswer::Failed(_) => {
                failures += 1;
                backoff(
                    failures,
                    agent.tuning.backoff_base,
                    agent.tuning.backoff_cap,
                )
            }
        };
        if agent.events.send(Event::SelfAnswer(answer)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

async fn read_self(client: &AgentClient) -> SelfAnswer {
    let result = client
        .send(
            http::Method::GET,
            "/v1/agent/self",
            &[],
            bytes::Bytes::new(),
            ONE_SHOT_TIMEOUT,
        )
        .await;
    match result {
        Ok((status, answer)) if status.is_success() => {
            match crate::consul::http::decode::<AgentSelf>("/v1/agent/self", &answer.body) {
                Ok(me) => SelfAnswer::Ok(Box::new(me)),
                Err(e) => SelfAnswer::Failed(e),
            }
        }
        Ok((status, answer)) => {
            let header = header_str(&answer.headers, DEFAULT_ACL_POLICY_HEADER)
                .and_then(|p| p.trim().parse().ok());
            let text = String::from_utf8_lossy(&answer.body).trim().to_owned();
            let e = AgentError::Status {
                path: "/v1/agent/self".into(),
                status,
                text,
            };
            if status.is_client_error() {
                SelfAnswer::Refused(e, header)
            } else {
                SelfAnswer::Failed(e)
            }
        }
        Err(e) => SelfAnswer::Failed(e),
    }
}
