//! Export and import: a self-contained team document (format, source version, name,
//! description, spec) with no secrets, member identities or share tokens; importing makes a new
//! team with fresh ids owned by the importer.

use chrono::{SecondsFormat, Utc};
use entity::teams;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use super::{
    teams::{self as team_service, NewTeam},
    versions,
};
use crate::{
    auth::guard,
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
};

pub const FORMAT: &str = "ensemble.team-export/v1";
/// The minor revision this server writes; older ones import with warnings.
pub const MINOR: u64 = 1;

/// The export document of a team, at its current version or at `version`.
pub async fn export(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    version: Option<i32>,
) -> Result<Value, AppError> {
    let access = guard::team(db, caller, team_id, TeamRole::Viewer).await?;
    let team = access.team;
    let (version, spec) = match version {
        None => (team.version, team.spec.clone()),
        Some(n) => {
            let row = versions::at(db, team_id, n)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("The team has no version {n}.")))?;
            (row.version, row.spec)
        }
    };
    Ok(json!({
        "format": FORMAT,
        "minor": MINOR,
        "exportedAt": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "source": {"version": version},
        "name": team.name,
        "description": team.description,
        "spec": spec,
    }))
}

/// A team made from an export document, and what the caller should know about it.
pub struct Imported {
    pub team: teams::Model,
    pub warnings: Vec<String>,
}

pub async fn import(
    db: &DatabaseConnection,
    audit: &super::audit::AuditChain,
    providers: &crate::config::ProviderSettings,
    caller: &Caller,
    document: &Value,
    name: Option<String>,
) -> Result<Imported, AppError> {
    let refuse = |path: &str, message: String| AppError::invalid(vec![Problem::new(path, message)]);
    let doc = document.as_object().ok_or_else(|| refuse("document", "must be a JSON object".into()))?;
    let format = doc.get("format").and_then(Value::as_str).unwrap_or_default();
    let major = format
        .strip_prefix("ensemble.team-export/v")
        .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
        .ok_or_else(|| refuse("document.format", format!("`{format}` is not an Ensemble team export (`{FORMAT}`)")))?;
    if major > 1 {
        return Err(refuse(
            "document.format",
            format!(
                "`{format}` is from a newer Ensemble; this server reads `{FORMAT}`. Upgrade the server to import it."
            ),
        ));
    }
    let mut warnings = Vec::new();
    let minor = doc.get("minor").and_then(Value::as_u64).unwrap_or(0);
    if minor < MINOR {
        warnings.push(format!(
            "The document is format 1.{minor}; it was read as 1.{MINOR} (fields it lacks take their defaults)."
        ));
    } else if minor > MINOR {
        warnings.push(format!(
            "The document is format 1.{minor}, newer than 1.{MINOR}: fields this server does not know were ignored."
        ));
    }
    for key in doc.keys() {
        if !["format", "minor", "exportedAt", "source", "name", "description", "spec"].contains(&key.as_str()) {
            warnings.push(format!("`{key}` is not part of the format and was ignored."));
        }
    }
    let name = name.or_else(|| doc.get("name").and_then(Value::as_str).map(str::to_string)).unwrap_or_default();
    let new = NewTeam {
        name,
        description: doc.get("description").and_then(Value::as_str).map(str::to_string),
        visibility: None,
        spec: Some(doc.get("spec").cloned().unwrap_or(Value::Null)),
    };
    let team = team_service::create_as(db, audit, providers, caller, new, super::audit::actions::TEAM_IMPORT).await?;
    Ok(Imported { team, warnings })
}
