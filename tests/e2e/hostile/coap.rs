//! Hostile input: coap (cases are added by the hardening work).
