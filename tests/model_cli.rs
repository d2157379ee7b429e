//! End-to-end tests of `limo init-model` and `limo debug loss-grad`.
