//! HTTP middleware: records the request families when the response body ends.
