//! Self-describing payloads, so a receiver can check that what arrived is
//! what was sent, by whom, to whom and under which number.

use bytes::Bytes;

pub(super) fn body_for(from: u8, to: u8, k: u64, len: usize) -> Bytes {
    let mut b = format!("{from}>{to}#{k}:").into_bytes();
    let mut x = (u64::from(from) << 56) ^ (u64::from(to) << 48) ^ k;
    while b.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b.push((x >> 56) as u8);
    }
    Bytes::from(b)
}

pub(super) fn parse_message(body: &[u8]) -> Option<(u8, u8, u64, usize)> {
    let colon = body.iter().position(|&c| c == b':')?;
    let head = std::str::from_utf8(&body[..colon]).ok()?;
    let (from, rest) = head.split_once('>')?;
    let (to, k) = rest.split_once('#')?;
    Some((
        from.parse().ok()?,
        to.parse().ok()?,
        k.parse().ok()?,
        body.len(),
    ))
}

/// The node's reply: names the client, the number and the operation.
pub(super) fn reply_for(client: u128, request: u64, body: &[u8]) -> Bytes {
    let mut reply = format!("reply {client:x}/{request} to ").into_bytes();
    reply.extend_from_slice(body);
    Bytes::from(reply)
}

/// The body of client slot `j`'s `k`th logical operation.
pub(super) fn op_body(j: usize, k: u64) -> Bytes {
    Bytes::from(format!("op {j}/{k}"))
}

/// Parses [`op_body`].
pub(super) fn parse_op(body: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (j, k) = text.strip_prefix("op ")?.split_once('/')?;
    Some((j.parse().ok()?, k.parse().ok()?))
}
