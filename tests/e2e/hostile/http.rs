//! Hostile input: http (cases are added by the hardening work).
