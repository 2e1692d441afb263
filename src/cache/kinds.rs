//! The table of cache kinds: one key type per kind, with its name in `/metrics`, how long an
//! entry lives, how many entries it may hold, and the writes that invalidate it.

use std::{sync::Arc, time::Duration};

use entity::{api_keys, template_categories, template_versions, templates, users};

use crate::{
    domain::UserPrincipal,
    orchestrator::{executor::Price, spec::TeamSpec},
};

/// One kind of cached value: its key type names it, `Value` is what it holds.
pub trait Kind: std::hash::Hash + Eq + Clone + Send + Sync + 'static {
    type Value: Clone + Send + Sync + 'static;
    const POLICY: Policy;
}

/// How a kind is kept.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Its name in `/metrics` and `resourceUsage`.
    pub name: &'static str,
    /// How long an entry lives after it is written.
    pub ttl: Duration,
    /// Most entries held; past it the least useful are evicted.
    pub capacity: u64,
}

const fn policy(name: &'static str, ttl_secs: u64, capacity: u64) -> Policy {
    Policy { name, ttl: Duration::from_secs(ttl_secs), capacity }
}

/// SHA-256 of a session token → the user it verified to.
///
/// Invalidated by: nothing needs to — a token's claims never change, and an entry read past the
/// token's expiry is ignored. Role changes and deletions live in [`UserId`] entries.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct SessionToken(pub [u8; 32]);

impl Kind for SessionToken {
    type Value = UserPrincipal;
    const POLICY: Policy = policy("session_tokens", 300, 100_000);
}

/// A user's row (role, deletion, profile), read on every request that signs in with a token
/// and for the owner of every API key.
///
/// Invalidated by: `setUserRole`, `updateProfile`, and Clerk's `user.created`, `user.updated`
/// and `user.deleted` webhooks.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct UserId(pub String);

impl Kind for UserId {
    type Value = Arc<users::Model>;
    const POLICY: Policy = policy("user_standings", 60, 100_000);
}

/// An API key's row by its prefix (the owner is read through [`UserId`]).
///
/// Invalidated by: `revokeApiKey`, `rotateApiKey`, and the deletion of its owner (Clerk's
/// `user.deleted` revokes every key of the user). Expiry is checked on every use.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct KeyPrefix(pub String);

impl Kind for KeyPrefix {
    type Value = Arc<api_keys::Model>;
    const POLICY: Policy = policy("api_keys", 60, 100_000);
}

/// A prefix that matched no API key, refused without a database read for a few seconds, to
/// blunt guessing.
///
/// Invalidated by: `createApiKey` (the new key's prefix), so a key is never hidden by a failed
/// lookup made just before it existed.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct UnknownKeyPrefix(pub String);

impl Kind for UnknownKeyPrefix {
    type Value = ();
    const POLICY: Policy = policy("unknown_api_keys", 5, 10_000);
}

/// A team's spec at one version, parsed, as runs and estimates use it.
///
/// Invalidated by: nothing needs to — versions never change. `updateTeam` and
/// `rollbackTeam` make a new version, whose key the next run asks for; entries of a
/// deleted team are never asked for again and expire.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct TeamVersion {
    pub team_id: String,
    pub version: i32,
}

impl Kind for TeamVersion {
    type Value = Arc<TeamSpec>;
    const POLICY: Policy = policy("team_specs", 3600, 10_000);
}

/// A template's row by id (its current version number, visibility, owner, category).
///
/// Invalidated by: `updateTemplate` (which also moves, renames and shares a template),
/// `restoreTemplateVersion` and `deleteTemplate`. Starters are reseeded before the server
/// serves, so before anything is cached.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct TemplateId(pub String);

impl Kind for TemplateId {
    type Value = Arc<templates::Model>;
    const POLICY: Policy = policy("templates", 600, 10_000);
}

/// One version of a template.
///
/// Invalidated by: nothing needs to — versions never change; a deleted template's versions are
/// unreachable once its [`TemplateId`] entry is gone, and expire.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct TemplateVersion {
    pub template_id: String,
    pub version: i32,
}

impl Kind for TemplateVersion {
    type Value = Arc<template_versions::Model>;
    const POLICY: Policy = policy("template_versions", 3600, 10_000);
}

/// Every template category, in display order.
///
/// Invalidated by: `createTemplateCategory`, `updateTemplateCategory`,
/// `deleteTemplateCategory`.
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct AllCategories;

impl Kind for AllCategories {
    type Value = Arc<Vec<template_categories::Model>>;
    const POLICY: Policy = policy("template_categories", 600, 1);
}

/// A model's price (its own row, else its provider's `provider/*` row; `None`: free).
///
/// Invalidated by: `upsertModelPrice`, which clears every entry (a `provider/*` row prices
/// many models).
#[derive(Clone, Hash, PartialEq, Eq)]
pub struct ModelName(pub String);

impl Kind for ModelName {
    type Value = Option<Price>;
    const POLICY: Policy = policy("model_prices", 300, 10_000);
}

/// Every kind but the JWKS (which is no key-value cache).
#[cfg(test)]
pub const ALL: [Policy; 9] = [
    SessionToken::POLICY,
    UserId::POLICY,
    KeyPrefix::POLICY,
    UnknownKeyPrefix::POLICY,
    TeamVersion::POLICY,
    TemplateId::POLICY,
    TemplateVersion::POLICY,
    AllCategories::POLICY,
    ModelName::POLICY,
];
