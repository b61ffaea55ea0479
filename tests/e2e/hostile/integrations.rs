//! Hostile input: integrations (cases are added by the hardening work).
