//! Integration tests of the HTTP API: the router called as a `tower::Service` over a real
//! SQLite store in a temporary directory, one module per area.

mod api;
mod audit;
mod bad_input;
mod certificates;
mod commands;
mod credentials;
mod devices;
mod enrollment;
mod groups;
mod health;
mod import;
mod jobs;
mod matrix;
mod openapi;
mod profiles;
mod replacement;
mod rotation;
mod tokens;
mod twins;
