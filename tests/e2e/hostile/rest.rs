//! Hostile input: rest (cases are added by the hardening work).
