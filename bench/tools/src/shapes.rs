//! The five query shapes, written once for Ensemble's schema (which the in-memory server copies)
//! and once for PostGraphile's, with aliases so that both answer the same JSON shape; and the
//! check that makes a first answer "correct" before its size becomes the one to match.

use bytes::Bytes;
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::data;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// `{ __typename }`: transport and engine, no data.
    Typename,
    /// One team by id (the id turns over the 1,000 teams).
    Team,
    /// 50 teams, their own fields only.
    Flat,
    /// 50 teams × their 5 members × each member's user.
    Nested,
    /// `updateTeam` writing a team's description (the same text again; the id turns over).
    Mutation,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Shape::Typename, Shape::Team, Shape::Flat, Shape::Nested, Shape::Mutation];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Typename => "typename",
            Shape::Team => "team",
            Shape::Flat => "flat",
            Shape::Nested => "nested",
            Shape::Mutation => "mutation",
        }
    }

    pub fn parse(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether each request names another team.
    fn per_team(self) -> bool {
        matches!(self, Shape::Team | Shape::Mutation)
    }
}

/// Which schema a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dialect {
    /// Ensemble's schema (also the in-memory server's and, for its request bodies, the static one's).
    Ensemble,
    /// PostGraphile 4's schema over the same tables (`--simple-collections both`).
    Postgraphile,
}

const TEAM_FIELDS: &str = "id name slug description visibility version";

fn query(shape: Shape, dialect: Dialect) -> String {
    let user = "user { id email displayName }";
    match (shape, dialect) {
        (Shape::Typename, _) => "{ __typename }".into(),
        (Shape::Team, Dialect::Ensemble) => format!("query Team($id: ID!) {{ team(id: $id) {{ {TEAM_FIELDS} }} }}"),
        (Shape::Team, Dialect::Postgraphile) => {
            format!("query Team($id: String!) {{ team: teamById(id: $id) {{ {TEAM_FIELDS} }} }}")
        }
        (Shape::Flat, Dialect::Ensemble) => format!("query Flat {{ teams(first: 50) {{ nodes {{ {TEAM_FIELDS} }} }} }}"),
        (Shape::Flat, Dialect::Postgraphile) => {
            format!("query Flat {{ teams: allTeams(first: 50, orderBy: ID_DESC) {{ nodes {{ {TEAM_FIELDS} }} }} }}")
        }
        (Shape::Nested, Dialect::Ensemble) => {
            format!("query Nested {{ teams(first: 50) {{ nodes {{ {TEAM_FIELDS} members {{ userId role {user} }} }} }} }}")
        }
        (Shape::Nested, Dialect::Postgraphile) => format!(
            "query Nested {{ teams: allTeams(first: 50, orderBy: ID_DESC) {{ nodes {{ {TEAM_FIELDS} \
             members: teamMembersByTeamIdList(orderBy: CREATED_AT_ASC) {{ userId role {} }} }} }} }}",
            user.replacen("user", "user: userByUserId", 1)
        ),
        (Shape::Mutation, Dialect::Ensemble) => "mutation Describe($id: ID!, $description: String!) { \
             updateTeam(id: $id, input: {description: $description}) { id description } }"
            .into(),
        (Shape::Mutation, Dialect::Postgraphile) => "mutation Describe($id: String!, $description: String!) { \
             updateTeam: updateTeamById(input: {id: $id, teamPatch: {description: $description}}) { team { id description } } }"
            .into(),
    }
}

/// The request body for team `i` (ignored by shapes that name no team).
fn body(shape: Shape, dialect: Dialect, i: usize) -> Bytes {
    let variables = match shape {
        Shape::Team => json!({"id": data::team_id(i)}),
        Shape::Mutation => json!({"id": data::team_id(i), "description": data::DESCRIPTION}),
        _ => json!({}),
    };
    Bytes::from(json!({"query": query(shape, dialect), "variables": variables}).to_string())
}

/// The bodies a run turns over: one per team, or just one.
pub fn bodies(shape: Shape, dialect: Dialect) -> Vec<Bytes> {
    let count = if shape.per_team() { data::TEAMS } else { 1 };
    (0..count).map(|i| body(shape, dialect, i)).collect()
}

/// Whether `answer` is the right answer to `bodies(shape, dialect)[0]` (team 0), read in full.
pub fn check(shape: Shape, dialect: Dialect, answer: &Value) -> Result<(), String> {
    if let Some(errors) = answer.get("errors") {
        return Err(format!("errors: {errors}"));
    }
    let data = &answer["data"];
    let team = |t: &Value, id: &str| -> Result<(), String> {
        let ok = t["id"] == id
            && t["name"].is_string()
            && t["slug"].is_string()
            && t["description"] == data::DESCRIPTION
            && t["visibility"].as_str().is_some_and(|v| v.eq_ignore_ascii_case("private"))
            && t["version"] == 1;
        if ok { Ok(()) } else { Err(format!("not team {id}: {t}")) }
    };
    match shape {
        Shape::Typename => match data["__typename"].as_str() {
            Some(_) => Ok(()),
            None => Err(format!("no __typename in {answer}")),
        },
        Shape::Team => team(&data["team"], &data::team_id(0)),
        Shape::Flat | Shape::Nested => {
            let nodes = data["teams"]["nodes"].as_array().ok_or_else(|| format!("no teams.nodes in {answer}"))?;
            if nodes.len() != 50 {
                return Err(format!("{} teams instead of 50", nodes.len()));
            }
            for (k, node) in nodes.iter().enumerate() {
                team(node, &data::team_id(data::TEAMS - 1 - k))?;
                if shape == Shape::Nested {
                    check_members(node)?;
                }
            }
            Ok(())
        }
        Shape::Mutation => {
            let updated = &data["updateTeam"];
            let updated = if dialect == Dialect::Postgraphile { &updated["team"] } else { updated };
            if updated["id"] == data::team_id(0) && updated["description"] == data::DESCRIPTION {
                Ok(())
            } else {
                Err(format!("unexpected mutation answer {answer}"))
            }
        }
    }
}

fn check_members(team: &Value) -> Result<(), String> {
    let members = team["members"].as_array().ok_or_else(|| format!("no members in {team}"))?;
    if members.len() != data::MEMBERS {
        return Err(format!("{} members instead of {}", members.len(), data::MEMBERS));
    }
    for (member, role) in members.iter().zip(data::ROLES) {
        let ok = member["role"].as_str().is_some_and(|r| r.eq_ignore_ascii_case(role))
            && member["userId"] == member["user"]["id"]
            && member["user"]["email"].is_string()
            && member["user"]["displayName"].is_string();
        if !ok {
            return Err(format!("unexpected member {member}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_of_one_shape_have_one_size() {
        for shape in Shape::ALL {
            for dialect in [Dialect::Ensemble, Dialect::Postgraphile] {
                let bodies = bodies(shape, dialect);
                assert!(bodies.iter().all(|b| b.len() == bodies[0].len()), "{shape:?} {dialect:?}");
            }
        }
    }

    #[test]
    fn an_answer_with_errors_is_not_correct() {
        let answer = json!({"data": {"__typename": "Query"}, "errors": [{"message": "no"}]});
        assert!(check(Shape::Typename, Dialect::Ensemble, &answer).is_err());
        assert!(check(Shape::Typename, Dialect::Ensemble, &json!({"data": {"__typename": "Query"}})).is_ok());
    }
}
