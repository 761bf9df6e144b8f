//! Operations: logging (and, with the controller, metrics and health endpoints).

pub mod logging;
