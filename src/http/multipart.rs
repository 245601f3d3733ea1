//! multipart/form-data bodies (RFC 7578): parts borrowed from the request body, no copies.
