//! Hostile input: auth (cases are added by the hardening work).
