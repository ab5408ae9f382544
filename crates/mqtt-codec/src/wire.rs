//! The data representations of §1.5: big-endian integers, Variable Byte Integers, length-prefixed binary
//! data and strings, read from a packet body and written to a buffer.
//!
//! Reading never goes past the body: a field that does not fit is [`DecodeError::UnexpectedEnd`]. Writing
//! assumes the caller validated lengths first (see `Packet::encoded_len`), so the writers cannot fail.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, MqttString, PacketType};

/// The largest value of a Variable Byte Integer (§1.5.5).
pub(crate) const MAX_VAR_INT: u32 = 268_435_455;

/// Decodes a Variable Byte Integer at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` ends inside the integer, the value and its length otherwise. More than four
/// bytes, or a non-minimal encoding ([MQTT-1.5.5-1]), is [`DecodeError::InvalidVarInt`].
pub(crate) fn read_var_int(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            // A last byte of zero after a continuation byte means fewer bytes would have done.
            if index > 0 && byte == 0 {
                return Err(DecodeError::InvalidVarInt);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 { Err(DecodeError::InvalidVarInt) } else { Ok(None) }
}

/// How many bytes the Variable Byte Integer encoding of `value` takes.
pub(crate) const fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`MAX_VAR_INT`], checked by the caller) as a Variable Byte Integer.
pub(crate) fn put_var_int(buf: &mut BytesMut, value: usize) {
    let mut rest = value;
    loop {
        let [low, ..] = rest.to_le_bytes();
        let digit = low & 0x7F;
        rest >>= 7;
        if rest == 0 {
            buf.put_u8(digit);
            return;
        }
        buf.put_u8(digit | 0x80);
    }
}

/// Writes a length-prefixed string (§1.5.4); [`MqttString`] guarantees the length fits in two bytes.
pub(crate) fn put_string(buf: &mut BytesMut, value: &MqttString) {
    put_binary(buf, value.as_str().as_bytes());
}

/// Writes length-prefixed binary data (§1.5.6); the caller checked that it is at most 65,535 bytes.
pub(crate) fn put_binary(buf: &mut BytesMut, value: &[u8]) {
    buf.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
    buf.put_slice(value);
}

/// A cursor over one packet body. Slices it hands out share the body's allocation.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    packet: PacketType,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, packet: PacketType) -> Self {
        Self { buf, packet }
    }

    pub(crate) fn packet(&self) -> PacketType {
        self.packet
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn end(&self, field: &'static str) -> DecodeError {
        DecodeError::UnexpectedEnd { packet: self.packet, field }
    }

    /// Takes the next `len` bytes.
    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(self.end(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Takes everything that is left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes.as_ref()).map_err(|_| self.end(field))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[byte]| byte)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let (value, len) = read_var_int(&self.buf)?.ok_or_else(|| self.end(field))?;
        self.take(len, field)?;
        Ok(value)
    }

    /// Two-byte length, then that many bytes (§1.5.6).
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 Encoded String (§1.5.4), validated ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<MqttString, DecodeError> {
        let bytes = self.binary(field)?;
        MqttString::from_utf8(&bytes)
            .map_err(|error| DecodeError::InvalidString { packet: self.packet, error })
    }

    /// Fails if bytes are left over after the last field.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { packet: self.packet, extra: self.buf.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries() {
        // The table of §1.5.5.
        for (value, bytes) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut buf = BytesMut::new();
            put_var_int(&mut buf, value);
            assert_eq!(&buf[..], bytes);
            assert_eq!(var_int_len(value), bytes.len());
            let decoded = read_var_int(bytes).unwrap().unwrap();
            assert_eq!(decoded, (u32::try_from(value).unwrap(), bytes.len()));
        }
    }

    #[test]
    fn var_int_errors() {
        assert_eq!(read_var_int(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert_eq!(read_var_int(&[]), Ok(None));
        assert_eq!(read_var_int(&[0xFF, 0xFF, 0xFF, 0xFF]), Err(DecodeError::InvalidVarInt));
        // Non-minimal encodings [MQTT-1.5.5-1].
        assert_eq!(read_var_int(&[0x80, 0x00]), Err(DecodeError::InvalidVarInt));
        assert_eq!(read_var_int(&[0xFF, 0x80, 0x00]), Err(DecodeError::InvalidVarInt));
    }
}
