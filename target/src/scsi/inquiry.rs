//! INQUIRY (SPC-4 6.6): standard data and the vital product data pages
//! 00h, 80h, 83h, 86h, B0h, B1h and B2h.

use vtgt_protocol::scsi::cdb::decode_inquiry;
use vtgt_protocol::scsi::sense::Sense;

use super::lu::{LogicalUnit, LuIdentity};
use super::{field, max_transfer_blocks, TargetPort, OPTIMAL_GRANULARITY_BLOCKS};

/// IEEE company identifier used in the NAA 6 designator. Operators with
/// their own OUI should replace it; the remaining 100 bits come from the
/// volume's stable identity.
pub const IEEE_OUI: u32 = 0x00_14_05;

/// Protocol identifier for iSCSI (SPC-4 table 362).
const PROTO_ISCSI: u8 = 0x5;

/// VPD pages we implement, in ascending order as page 00h lists them.
pub const VPD_PAGES: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];

/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// `s` as exactly `n` printable ASCII bytes, space padded (SPC-4 4.4.1).
fn ascii_field(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..=0x7E).contains(&b) { b } else { b'_' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// Standard INQUIRY data. With no LU, peripheral qualifier 011b and device
/// type 1Fh (SPC-4 6.6.2).
pub fn standard(identity: Option<&LuIdentity>) -> Vec<u8> {
    let mut d = vec![0u8; 58];
    d[0] = if identity.is_some() { 0x00 } else { 0x7F };
    // SPC-4.
    d[2] = 0x06;
    // HiSup, response data format 2.
    d[3] = 0x12;
    // CmdQue: full task management model.
    d[7] = 0x02;
    if identity.is_some() {
        // TPGS 11b: implicit and explicit ALUA; 3PC: EXTENDED COPY.
        d[5] = 0x30 | 0x08;
    }
    if let Some(id) = identity {
        d[8..16].copy_from_slice(&ascii_field(&id.vendor, 8));
        d[16..32].copy_from_slice(&ascii_field(&id.product, 16));
        d[32..36].copy_from_slice(&ascii_field(&id.revision, 4));
    } else {
        d[8..36].fill(b' ');
    }
    for v in VERSION_DESCRIPTORS {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d[4] = (d.len() - 5) as u8;
    d
}

/// Appends one designation descriptor (SPC-4 7.8.6.1).
fn designator(out: &mut Vec<u8>, code_set: u8, piv_assoc_type: u8, body: &[u8]) {
    let piv = piv_assoc_type & 0x80 != 0;
    let proto = if piv { PROTO_ISCSI << 4 } else { 0 };
    out.push(proto | (code_set & 0x0F));
    out.push(piv_assoc_type);
    out.push(0);
    out.push(body.len().min(255) as u8);
    out.extend_from_slice(&body[..body.len().min(255)]);
}

/// The NAA IEEE Registered Extended (6h) designator body: NAA, 24-bit OUI,
/// 36-bit vendor specific identifier and 64-bit extension, all derived from
/// the stable identity so they survive restarts.
pub fn naa6(id: u64) -> [u8; 16] {
    let vsi = (id >> 28) & 0xF_FFFF_FFFF;
    let hi: u64 = (0x6u64 << 60) | ((IEEE_OUI as u64) << 36) | vsi;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&id.to_be_bytes());
    b
}

fn device_identification(id: &LuIdentity, port: TargetPort) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA, binary, associated with the LU.
    designator(&mut d, 0x1, 0x03, &naa6(id.naa_id));
    // T10 vendor ID: vendor, then the serial number to make it unique.
    let mut t10 = ascii_field(&id.vendor, 8);
    t10.extend(ascii_field(&id.serial, id.serial.len().min(64)));
    designator(&mut d, 0x2, 0x01, &t10);
    // SCSI name string of the target device: UTF-8, NUL terminated and
    // padded to a multiple of 4.
    let mut name: Vec<u8> = id.target_name.bytes().take(223).collect();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    designator(&mut d, 0x3, 0x80 | 0x20 | 0x08, &name);
    // Relative target port, and target port group, of the target port.
    let mut rel = [0u8; 4];
    rel[2..].copy_from_slice(&port.relative_id.to_be_bytes());
    designator(&mut d, 0x1, 0x80 | 0x10 | 0x04, &rel);
    let mut tpg = [0u8; 4];
    tpg[2..].copy_from_slice(&port.group.to_be_bytes());
    designator(&mut d, 0x1, 0x80 | 0x10 | 0x05, &tpg);
    d
}

/// One VPD page, header included, or `None` if we do not have it.
pub fn vpd_page(lu: &LogicalUnit, page: u8, port: TargetPort) -> Option<Vec<u8>> {
    let id = lu.identity();
    let body: Vec<u8> = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => ascii_field(&id.serial, id.serial.len().min(252)),
        0x83 => device_identification(id, port),
        0x8F => super::xcopy::vpd_8f(),
        0x86 => {
            let mut b = vec![0u8; 60];
            // SIMPSUP only: ordering beyond SIMPLE is the transport's to
            // claim, and it does not.
            b[1] = 0x01;
            // LUICLR: a reported unit attention is cleared for that nexus.
            b[3] = 0x01;
            b
        }
        0xB0 => {
            let mut b = vec![0u8; 60];
            // Optimal transfer length granularity.
            b[2..4].copy_from_slice(&(OPTIMAL_GRANULARITY_BLOCKS as u16).to_be_bytes());
            // Maximum transfer length, optimal transfer length and maximum
            // prefetch length, all in blocks.
            let max = max_transfer_blocks(lu.volume().block_size());
            b[4..8].copy_from_slice(&max.to_be_bytes());
            b[8..12].copy_from_slice(&max.to_be_bytes());
            b[12..16].copy_from_slice(&max.to_be_bytes());
            super::provisioning::fill_vpd_b0(&mut b);
            b
        }
        0xB1 => {
            let mut b = vec![0u8; 60];
            // Medium rotation rate 0001h: non-rotating medium.
            b[0..2].copy_from_slice(&1u16.to_be_bytes());
            // WABEREQ and WACEREQ 01b: after a SANITIZE BLOCK ERASE or
            // CRYPTOGRAPHIC ERASE, reads succeed (and return zeros).
            b[3] = 0x50;
            b
        }
        // Thin provisioned, consistent with READ CAPACITY (16) LBPME.
        0xB2 => super::provisioning::vpd_b2(),
        _ => return None,
    };
    let mut d = vec![0x00, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend(body);
    Some(d)
}

/// INQUIRY on an existing LU; returns the data and the allocation length.
pub fn inquiry(lu: &LogicalUnit, cdb: &[u8], port: TargetPort) -> Result<(Vec<u8>, usize), Sense> {
    let inq = decode_inquiry(cdb).map_err(field)?;
    let data = if inq.evpd {
        vpd_page(lu, inq.page, port).ok_or(Sense::invalid_cdb_field(2, None))?
    } else {
        let mut d = standard(Some(lu.identity()));
        if lu.removable() {
            // RMB: the medium is removable.
            d[1] |= 0x80;
        }
        d
    };
    Ok((data, inq.alloc as usize))
}
