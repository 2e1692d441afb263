//! Who may do what: roles, and who may find a team or a template.

use sea_orm::entity::prelude::*;

/// The global role (`users.role`): an admin manages the whole server, a member only what they
/// own or share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "global_role")]
pub enum GlobalRole {
    #[sea_orm(string_value = "admin")]
    Admin,
    #[sea_orm(string_value = "member")]
    Member,
}

/// A role on one team (`team_members.role`, `team_share_links.role`), weakest first: a stronger
/// role may do all a weaker one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "team_role")]
pub enum TeamRole {
    /// Reads the team.
    #[sea_orm(string_value = "viewer")]
    Viewer,
    /// Runs the team, cannot change it.
    #[sea_orm(string_value = "operator")]
    Operator,
    /// Changes the team.
    #[sea_orm(string_value = "editor")]
    Editor,
    /// Manages members, archives and deletes.
    #[sea_orm(string_value = "owner")]
    Owner,
}

/// Who may find a team (`teams.visibility`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "visibility")]
pub enum Visibility {
    /// Members only.
    #[sea_orm(string_value = "private")]
    Private,
    /// Anyone may view it.
    #[sea_orm(string_value = "public")]
    Public,
}

/// Who may use a template (`templates.visibility`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "template_visibility")]
pub enum TemplateVisibility {
    /// Its owner (and admins).
    #[sea_orm(string_value = "private")]
    Private,
    /// The members of its team.
    #[sea_orm(string_value = "team")]
    Team,
    /// Anyone signed in.
    #[sea_orm(string_value = "public")]
    Public,
}

/// What a template makes (`templates.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)", enum_name = "template_kind")]
pub enum TemplateKind {
    /// A team spec to instantiate.
    #[sea_orm(string_value = "team")]
    Team,
    /// A prompt with variables.
    #[sea_orm(string_value = "query")]
    Query,
    /// Ordered steps run against a team.
    #[sea_orm(string_value = "workflow")]
    Workflow,
    /// A team with a sample conversation.
    #[sea_orm(string_value = "demo")]
    Demo,
}
