//! `GET|HEAD /v1/models`: the models the worker advertised, OpenAI-shaped.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state.worker.with_status(|status| {
        status
            .models
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "codex"}))
            .collect()
    });
    Json(json!({"object": "list", "data": data}))
}
