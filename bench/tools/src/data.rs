//! The data every target serves: 1,000 teams of 5 members over 1,000 users, the same on every
//! run (fixed ids, names and times) and of fixed width, so that every team's answer has the
//! same size and answers can be compared across targets byte for byte.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};

pub const TEAMS: usize = 1000;
pub const MEMBERS: usize = 5;
pub const USERS: usize = 1000;
/// Every team's description; the mutation writes it again, so the data never changes.
pub const DESCRIPTION: &str = "A team seeded for the side-by-side benchmark.";
/// The admin the load generator signs in as (not a member of any team; admins see them all).
pub const ADMIN: &str = "user_bench_admin";
/// The roles of a team's five members, in the order they joined.
pub const ROLES: [&str; MEMBERS] = ["owner", "editor", "operator", "viewer", "viewer"];

/// `team_` and 32 hex digits, like the ids Ensemble makes (UUIDv7, simple form).
pub fn team_id(i: usize) -> String {
    format!("team_0190a000000070008000{i:012x}")
}

pub fn user_id(i: usize) -> String {
    format!("user_bench_{i:04}")
}

/// When the data was made: users at this instant, member `k` of team `i` `5 i + k` seconds later.
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().unwrap_or_default()
}

pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
}

pub struct Member {
    pub user: usize,
    pub role: &'static str,
    pub joined: DateTime<Utc>,
}

pub struct Team {
    pub id: String,
    pub owner: usize,
    pub name: String,
    pub slug: String,
    pub members: Vec<Member>,
}

pub fn users() -> Vec<User> {
    (0..USERS)
        .map(|i| User {
            id: user_id(i),
            email: format!("member{i:04}@example.com"),
            display_name: format!("Member {i:04}"),
        })
        .collect()
}

/// Team `i` is owned by user `i`; its other members are the next four users.
pub fn teams() -> Vec<Team> {
    (0..TEAMS)
        .map(|i| Team {
            id: team_id(i),
            owner: i,
            name: format!("Team {i:04}"),
            slug: format!("team-{i:04}"),
            members: (0..MEMBERS)
                .map(|k| Member {
                    user: (i + k) % USERS,
                    role: ROLES[k],
                    joined: epoch() + Duration::seconds((i * MEMBERS + k) as i64),
                })
                .collect(),
        })
        .collect()
}

/// The spec of every team: Ensemble's default, one agent on the offline model.
pub fn spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "assistant", "model": "local/echo", "systemPrompt": "You are a helpful assistant."}],
        "routing": {"rules": [], "default": "assistant"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_one_width_so_answers_have_one_size() {
        assert_eq!(team_id(0).len(), team_id(TEAMS - 1).len());
        assert_eq!(team_id(0).len(), "team_".len() + 32);
        assert_eq!(user_id(0).len(), user_id(USERS - 1).len());
    }

    #[test]
    fn every_team_has_five_distinct_members_led_by_its_owner() {
        for team in teams() {
            let mut users: Vec<usize> = team.members.iter().map(|m| m.user).collect();
            assert_eq!(users[0], team.owner);
            users.sort_unstable();
            users.dedup();
            assert_eq!(users.len(), MEMBERS);
        }
    }
}
