//! The `JSON` scalar, with `@specifiedBy` so code generators map it to a JSON type instead of
//! `unknown`. (`DateTime` is async-graphql's, which already names RFC 3339.) Use this `Json`,
//! never `async_graphql::Json`, which has no `@specifiedBy` (clippy.toml refuses it).

use std::{
    borrow::Cow,
    ops::{Deref, DerefMut},
};

use async_graphql::{
    ContextSelectionSet, InputType, InputValueResult, OutputType, Positioned, ServerResult, Value,
    parser::types::Field,
    registry::{MetaType, MetaTypeId, Registry},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Where `JSON` is specified: RFC 8259.
pub const JSON_SPECIFIED_BY: &str = "https://datatracker.ietf.org/doc/html/rfc8259";
/// Where `DateTime` is specified: RFC 3339 (set by async-graphql).
pub const DATE_TIME_SPECIFIED_BY: &str = "https://datatracker.ietf.org/doc/html/rfc3339";

/// Any JSON value, in a GraphQL field or argument typed `JSON`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(transparent)]
pub struct Json<T>(pub T);

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

fn meta_type() -> MetaType {
    MetaType::Scalar {
        name: "JSON".to_string(),
        description: Some("Any JSON value (RFC 8259).".to_string()),
        is_valid: None,
        visible: None,
        inaccessible: false,
        tags: Vec::new(),
        specified_by_url: Some(JSON_SPECIFIED_BY.to_string()),
        directive_invocations: Vec::new(),
        requires_scopes: Vec::new(),
    }
}

impl<T: DeserializeOwned + Serialize + Send + Sync> InputType for Json<T> {
    type RawValueType = T;

    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("JSON")
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_input_type::<Self, _>(MetaTypeId::Scalar, |_| meta_type())
    }

    fn parse(value: Option<Value>) -> InputValueResult<Self> {
        Ok(async_graphql::from_value(value.unwrap_or_default())?)
    }

    fn to_value(&self) -> Value {
        async_graphql::to_value(&self.0).unwrap_or_default()
    }

    fn as_raw_value(&self) -> Option<&T> {
        Some(&self.0)
    }
}

impl<T: Serialize + Send + Sync> OutputType for Json<T> {
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("JSON")
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_output_type::<Self, _>(MetaTypeId::Scalar, |_| meta_type())
    }

    async fn resolve(&self, _ctx: &ContextSelectionSet<'_>, _field: &Positioned<Field>) -> ServerResult<Value> {
        Ok(async_graphql::to_value(&self.0).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_the_scalar() {
        let json = serde_json::json!({"a": [1, "two", null, {"b": true}]});
        let parsed = <Json<serde_json::Value> as InputType>::parse(Some(Value::from_json(json.clone()).unwrap()));
        assert_eq!(parsed.unwrap().0, json);
        assert_eq!(InputType::to_value(&Json(json.clone())).into_json().unwrap(), json);
    }
}
