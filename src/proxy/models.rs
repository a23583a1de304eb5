//! `GET|HEAD /v1/models`: the models the worker advertised, OpenAI-shaped.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// Written straight from the worker's status, in place: building a `serde_json::Value`
/// tree first (a map per model) cost more than the rest of the route.
pub(crate) async fn list(State(state): State<AppState>) -> Response {
    let body = state.worker.with_status(|status| {
        serde_json::to_vec(&ModelList {
            object: "list",
            data: status
                .models
                .iter()
                .map(|id| Model {
                    id,
                    object: "model",
                    created: 0,
                    owned_by: "codex",
                })
                .collect(),
        })
    });
    match body {
        Ok(body) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(e) => {
            ApiError::internal(format!("could not write the model list: {e}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_list_has_openais_shape() {
        let models = ["codex-demo".to_string(), "o\"dd".to_string()];
        let body = serde_json::to_value(ModelList {
            object: "list",
            data: models
                .iter()
                .map(|id| Model {
                    id,
                    object: "model",
                    created: 0,
                    owned_by: "codex",
                })
                .collect(),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"object": "list", "data": [
                {"id": "codex-demo", "object": "model", "created": 0, "owned_by": "codex"},
                {"id": "o\"dd", "object": "model", "created": 0, "owned_by": "codex"},
            ]})
        );
    }
}
