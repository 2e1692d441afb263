//! Who is calling: nobody, a signed-in user, an API key, or the server itself; what they may
//! do (global and team roles, API-key scopes) and where a call comes from.

use chrono::{DateTime, Utc};

/// The global role: ADMIN manages the whole server, MEMBER only what they own or share (a typed
/// state, stored as text: docs/database.md).
pub use entity::states::GlobalRole;

/// The Clerk organisation a session token was issued for (v1 or v2 claims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Org {
    pub id: String,
    pub role: Option<String>,
    pub slug: Option<String>,
    pub permissions: Vec<String>,
}

/// A user whose token was verified.
#[derive(Clone, Debug)]
pub struct UserPrincipal {
    pub id: String,
    pub role: GlobalRole,
    pub email: Option<String>,
    pub org: Option<Org>,
    /// When the token stops being valid; a websocket closes then.
    pub expires_at: DateTime<Utc>,
}

/// An API key acting for its owner, within its scopes and (optionally) one team.
#[derive(Clone, Debug)]
pub struct KeyPrincipal {
    pub key_id: String,
    pub prefix: String,
    pub team_id: Option<String>,
    pub scopes: Vec<Scope>,
    pub owner: UserPrincipal,
    /// The key's own daily budgets (tokens, US dollars), on top of its owner's.
    pub daily_token_budget: Option<i64>,
    pub daily_cost_budget_usd: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub enum Principal {
    /// No credentials were sent: may only read what is public.
    #[default]
    Anonymous,
    User(UserPrincipal),
    ApiKey(KeyPrincipal),
    /// The server itself, acting on a signed webhook or a schedule; never a request's caller.
    System(&'static str),
}

impl Principal {
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Self::Anonymous | Self::System(_) => None,
            Self::User(user) => Some(&user.id),
            Self::ApiKey(key) => Some(&key.owner.id),
        }
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Anonymous | Self::System(_) => None,
            Self::User(user) => Some(user.expires_at),
            Self::ApiKey(key) => Some(key.owner.expires_at),
        }
    }
}

/// Per-team roles, weakest first: a stronger role may do all a weaker one may (a typed state).
pub use entity::states::TeamRole;

/// What a client may do with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, async_graphql::Enum)]
pub enum Scope {
    TeamsRead,
    TeamsWrite,
    RunsExecute,
    TemplatesRead,
    TemplatesWrite,
    AnalyticsRead,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TeamsRead => "teams:read",
            Self::TeamsWrite => "teams:write",
            Self::RunsExecute => "runs:execute",
            Self::TemplatesRead => "templates:read",
            Self::TemplatesWrite => "templates:write",
            Self::AnalyticsRead => "analytics:read",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::TeamsRead,
            Self::TeamsWrite,
            Self::RunsExecute,
            Self::TemplatesRead,
            Self::TemplatesWrite,
            Self::AnalyticsRead,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// Who acts, and from where.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub principal: Principal,
    pub meta: RequestMeta,
}

/// Where an operation comes from: the request id (`x-request-id`), the peer address and the
/// user agent of the HTTP request or websocket it runs in.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl RequestMeta {
    pub fn from_headers(headers: &axum::http::HeaderMap, peer: Option<std::net::SocketAddr>) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self {
            request_id: text("x-request-id").unwrap_or_default(),
            ip: peer.map(|p| p.ip().to_string()),
            user_agent: text("user-agent").map(|ua| ua.chars().take(512).collect()),
        }
    }
}
