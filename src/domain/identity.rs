//! Who is calling: nobody, a signed-in user, an API key, or the server itself.

use chrono::{DateTime, Utc};

/// The global role: ADMIN manages the whole server, MEMBER only what they own or share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum GlobalRole {
    Admin,
    Member,
}

impl GlobalRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

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
    pub scopes: Vec<super::api_key::Scope>,
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
