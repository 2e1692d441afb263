//! `ensemble token`: a dev-issuer session token to paste into GraphiQL. The token alone goes
//! to stdout, so `TOKEN=$(ensemble token --user alice)` captures nothing else.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::CommandError;
use crate::{auth::dev::DevIssuer, config::DEFAULT_DATA_DIR, domain::GlobalRole};

#[derive(Args)]
pub struct TokenArgs {
    /// The user id the token is for (`sub`).
    #[arg(long)]
    user: String,
    /// The user's email.
    #[arg(long)]
    email: Option<String>,
    /// `admin` or `member`.
    #[arg(long, default_value = "member", value_parser = parse_role)]
    role: GlobalRole,
    /// How long the token is valid: `30s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Folder holding the dev signing key (created there when missing).
    #[arg(long, env = "ENSEMBLE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Set when Clerk issues the tokens: then there is no dev issuer to sign with.
    #[arg(long, env = "CLERK_JWKS_URL", hide = true)]
    clerk_jwks_url: Option<String>,
    #[arg(long, env = "CLERK_JWT_KEY", hide = true, hide_env_values = true)]
    clerk_jwt_key: Option<String>,
}

pub async fn run(args: TokenArgs) -> Result<(), CommandError> {
    if args.clerk_jwks_url.is_some() || args.clerk_jwt_key.is_some() {
        return Err("Clerk issues the tokens in this configuration (CLERK_JWKS_URL or CLERK_JWT_KEY is set)".into());
    }
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let key = DevIssuer::key_path(data_dir);
    let existed = key.exists();
    let issuer = DevIssuer::load_or_create(data_dir).await?;
    if !existed {
        let shown = std::path::absolute(&key).unwrap_or(key);
        eprintln!(
            "created a new dev signing key at {}: servers using this data folder accept the tokens it signs",
            shown.display()
        );
    }
    let token = issuer.sign(&args.user, args.email.as_deref(), args.role, args.ttl)?;
    println!("{token}");
    Ok(())
}

fn parse_role(value: &str) -> Result<GlobalRole, String> {
    let value = value.to_ascii_lowercase();
    sea_orm::ActiveEnum::try_from_value(&value).map_err(|_| "expected `admin` or `member`".to_string())
}

/// `90s`, `15m`, `1h`, `7d` (or plain seconds).
pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = digits.parse().map_err(|_| format!("`{value}` is not a duration like 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{value}` is not a duration like 30m, 1h or 7d")),
    };
    if secs == 0 || secs > 366 * 86_400 {
        return Err("a token lives between 1 second and 366 days".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("90").unwrap().as_secs(), 90);
        assert_eq!(parse_ttl("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_ttl("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_ttl("7d").unwrap().as_secs(), 604_800);
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
