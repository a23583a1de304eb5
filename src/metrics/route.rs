//! The guarded `GET /metrics` route.
