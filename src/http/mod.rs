//! HTTP/1.1 as our clients (curl, PHP, CI jobs) speak it: request heads, chunked bodies, multipart
//! bodies, responses and routing. Pure codecs: the server loop owns the sockets.

pub mod chunked;
pub mod multipart;
pub mod request;
pub mod response;
pub mod router;
