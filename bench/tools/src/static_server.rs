//! `ensemble-bench static`: the HTTP limit of this machine. An axum server that reads the
//! request body and answers `POST /{shape}` with the exact bytes Ensemble answered to that shape
//! (files `{shape}.json` in the answers folder, captured by `ensemble-bench capture`), nothing
//! parsed, nothing computed.

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc};

use axum::{
    Router,
    extract::{Path as UrlPath, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;

use crate::shapes::Shape;

type Answers = Arc<HashMap<String, Bytes>>;

pub async fn serve(listen: SocketAddr, answers: &Path) -> Result<(), String> {
    let mut loaded = HashMap::new();
    for shape in Shape::ALL {
        let file = answers.join(format!("{}.json", shape.name()));
        let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        loaded.insert(shape.name().to_string(), Bytes::from(bytes));
    }
    let app = Router::new().route("/{shape}", post(answer)).with_state(Arc::new(loaded));
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    axum::serve(listener, app).with_graceful_shutdown(crate::terminated()).await.map_err(|e| e.to_string())
}

async fn answer(State(answers): State<Answers>, UrlPath(shape): UrlPath<String>, _body: Bytes) -> Response {
    match answers.get(&shape) {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
