//! Mode parameters (SPC-4 7.5, SBC-3 6.4): MODE SENSE and MODE SELECT with
//! the Caching, Control and Informational Exceptions Control pages.
//!
//! Saved values are not implemented: page control 11b is refused and SP is
//! an invalid field. Only the bits in the changeable masks may be altered.

use vtgt_engine::Notice;
use vtgt_protocol::scsi::cdb::{decode_mode_select, decode_mode_sense};
use vtgt_protocol::scsi::sense::{Asc, Sense};

use super::lu::LogicalUnit;
use super::{field, ScsiCommand};

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0A;
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1C;
pub const PAGE_ALL: u8 = 0x3F;

/// Every page we implement, in the order MODE SENSE returns them.
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS];

/// The mode parameters that can change. Everything else in the pages is
/// constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeParams {
    /// Caching: write cache enabled. With WCE = 0 every write is FUA.
    pub wce: bool,
    /// Caching: read cache disabled (no effect; we keep no read cache).
    pub rcd: bool,
    /// Control: return descriptor-format sense data.
    pub d_sense: bool,
    /// Informational exceptions: disable exception reporting.
    pub dexcpt: bool,
    /// Control: software write protect; writes fail with DATA PROTECT.
    pub swp: bool,
}

impl Default for ModeParams {
    fn default() -> Self {
        // Completed writes are not durable until a flush or FUA, so a
        // write-back cache is what the engine really provides.
        Self {
            wce: true,
            rcd: false,
            d_sense: false,
            dexcpt: true,
            swp: false,
        }
    }
}

/// Page control values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

impl ModeParams {
    /// One page as MODE SENSE returns it (PS = 0: nothing is saveable).
    pub fn page(&self, code: u8, pc: PageControl) -> Option<Vec<u8>> {
        let v = match pc {
            PageControl::Current => *self,
            PageControl::Default => ModeParams::default(),
            PageControl::Changeable => ModeParams {
                wce: true,
                rcd: true,
                d_sense: true,
                dexcpt: true,
                swp: true,
            },
        };
        let bit = |on: bool, mask: u8| if on { mask } else { 0 };
        Some(match code {
            PAGE_CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = PAGE_CACHING;
                p[1] = 0x12;
                p[2] = bit(v.wce, 0x04) | bit(v.rcd, 0x01);
                p
            }
            PAGE_CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_CONTROL;
                p[1] = 0x0A;
                // TST 000b (one task set for all nexuses), D_SENSE; QAM 0,
                // QErr 00b, TAS 0; busy timeout undefined. Keeping the fixed
                // fields zero lets initiators echo the page back verbatim.
                p[2] = bit(v.d_sense, 0x04);
                p[4] = bit(v.swp, 0x08);
                p
            }
            PAGE_INFO_EXCEPTIONS => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_INFO_EXCEPTIONS;
                p[1] = 0x0A;
                p[2] = bit(v.dexcpt, 0x08);
                p
            }
            _ => return None,
        })
    }

    /// Takes the changeable bits of a page the caller validated.
    fn apply(&mut self, code: u8, page: &[u8]) {
        let b2 = page.get(2).copied().unwrap_or(0);
        match code {
            PAGE_CACHING => {
                self.wce = b2 & 0x04 != 0;
                self.rcd = b2 & 0x01 != 0;
            }
            PAGE_CONTROL => {
                self.d_sense = b2 & 0x04 != 0;
                self.swp = page.get(4).copied().unwrap_or(0) & 0x08 != 0;
            }
            PAGE_INFO_EXCEPTIONS => self.dexcpt = b2 & 0x08 != 0,
            _ => {}
        }
    }
}

/// Device-specific parameter of the mode parameter header (SBC-3 6.4.1):
/// WP mirrors SWP, DPOFUA = 1.
fn device_specific(params: &ModeParams) -> u8 {
    if params.swp {
        0x90
    } else {
        0x10
    }
}

/// MODE SENSE (6) and (10). Returns the whole mode data; the caller trims
/// it to the allocation length.
pub fn mode_sense(lu: &LogicalUnit, cdb: &[u8]) -> Result<(Vec<u8>, usize), Sense> {
    let ms = decode_mode_sense(cdb).map_err(field)?;
    let pc = match ms.pc {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => {
            return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED)
                .with_field(vtgt_protocol::scsi::sense::FieldPointer::cdb(2, Some(7))))
        }
    };
    let params = lu.mode();
    let mut pages = Vec::new();
    if ms.page == PAGE_ALL {
        if ms.subpage != 0x00 && ms.subpage != 0xFF {
            return Err(Sense::invalid_cdb_field(3, None));
        }
        for code in PAGES {
            pages.extend(params.page(code, pc).unwrap_or_default());
        }
    } else {
        let page = params
            .page(ms.page, pc)
            .ok_or(Sense::invalid_cdb_field(2, Some(5)))?;
        // We have no subpages; FFh ("all subpages") returns the page alone.
        if ms.subpage != 0x00 && ms.subpage != 0xFF {
            return Err(Sense::invalid_cdb_field(3, None));
        }
        pages.extend(page);
    }

    let vol = lu.volume();
    let (nblocks, bs) = (vol.num_blocks(), vol.block_size());
    let mut bd = Vec::new();
    if !ms.dbd {
        let changeable = pc == PageControl::Changeable;
        if ms.llbaa {
            bd.extend_from_slice(&if changeable { 0 } else { nblocks }.to_be_bytes());
            bd.extend_from_slice(&[0u8; 4]);
            bd.extend_from_slice(&if changeable { 0 } else { bs }.to_be_bytes());
        } else {
            let n = u32::try_from(nblocks).unwrap_or(u32::MAX);
            bd.extend_from_slice(&if changeable { 0 } else { n }.to_be_bytes());
            let len = if changeable { 0 } else { bs & 0x00FF_FFFF };
            bd.extend_from_slice(&len.to_be_bytes());
        }
    }

    let mut out = Vec::new();
    if ms.ten {
        let total = 8 + bd.len() + pages.len();
        out.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        out.push(0);
        out.push(device_specific(&params));
        out.push(if ms.llbaa { 0x01 } else { 0x00 });
        out.push(0);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let total = 4 + bd.len() + pages.len();
        out.push((total - 1) as u8);
        out.push(0);
        out.push(device_specific(&params));
        out.push(bd.len() as u8);
    }
    out.extend(bd);
    out.extend(pages);
    Ok((out, ms.alloc as usize))
}

fn length_error() -> Sense {
    Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
}

fn top_bit(x: u8) -> u8 {
    7 - x.leading_zeros() as u8
}

/// Validates a MODE SELECT parameter list against `current` and returns the
/// parameters it asks for. Nothing is applied unless all of it is valid.
pub fn parse_mode_select(
    current: ModeParams,
    ten: bool,
    list: &[u8],
    nblocks: u64,
    block_size: u32,
) -> Result<ModeParams, Sense> {
    let hl = if ten { 8 } else { 4 };
    let header = list.get(..hl).ok_or_else(length_error)?;
    // Mode data length is reserved in MODE SELECT; tolerate echoes of it.
    // The medium type of a direct-access device is 00h.
    let mt = if ten { 2 } else { 1 };
    if header[mt] != 0 {
        return Err(Sense::invalid_param_field(mt, None));
    }
    let (bdl, bdl_at, long) = if ten {
        (
            u16::from_be_bytes([header[6], header[7]]) as usize,
            6,
            header[4] & 0x01 != 0,
        )
    } else {
        (header[3] as usize, 3, false)
    };
    let want = if long { 16 } else { 8 };
    if bdl != 0 && bdl != want {
        return Err(Sense::invalid_param_field(bdl_at, None));
    }
    let bd = list.get(hl..hl + bdl).ok_or_else(length_error)?;
    if bdl != 0 {
        let (count, len, len_at) = if long {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bd[0..8]);
            (
                u64::from_be_bytes(n),
                u32::from_be_bytes([bd[12], bd[13], bd[14], bd[15]]),
                hl + 12,
            )
        } else {
            (
                u32::from_be_bytes([bd[0], bd[1], bd[2], bd[3]]) as u64,
                u32::from_be_bytes([0, bd[5], bd[6], bd[7]]),
                hl + 5,
            )
        };
        // Capacity cannot be changed this way: 0 or the current count only.
        let current_count = if long {
            nblocks
        } else {
            nblocks.min(u32::MAX as u64)
        };
        if count != 0 && count != current_count {
            return Err(Sense::invalid_param_field(hl, None));
        }
        if len != block_size {
            return Err(Sense::invalid_param_field(len_at, None));
        }
    }

    let mut next = current;
    let mut at = hl + bdl;
    while at < list.len() {
        let b0 = list[at];
        let code = b0 & 0x3F;
        if b0 & 0x40 != 0 {
            // SPF: we implement no subpages.
            return Err(Sense::invalid_param_field(at, Some(6)));
        }
        let len = *list.get(at + 1).ok_or_else(length_error)? as usize;
        let page = list.get(at..at + 2 + len).ok_or_else(length_error)?;
        let cur = current
            .page(code, PageControl::Current)
            .ok_or(Sense::invalid_param_field(at, Some(5)))?;
        let chg = current
            .page(code, PageControl::Changeable)
            .unwrap_or_default();
        if page.len() != cur.len() {
            return Err(Sense::invalid_param_field(at + 1, None));
        }
        for i in 2..page.len() {
            let diff = (page[i] ^ cur[i]) & !chg.get(i).copied().unwrap_or(0);
            if diff != 0 {
                return Err(Sense::invalid_param_field(at + i, Some(top_bit(diff))));
            }
        }
        next.apply(code, page);
        at += page.len();
    }
    Ok(next)
}

/// MODE SELECT (6) and (10).
pub async fn mode_select(lu: &LogicalUnit, cmd: &ScsiCommand<'_>) -> Result<(), Sense> {
    let sel = decode_mode_select(cmd.cdb).map_err(field)?;
    if !sel.pf {
        // Only the SPC page format is implemented.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    if sel.sp {
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    let want = sel.param_len as usize;
    if want == 0 {
        return Ok(());
    }
    if cmd.data_out.len() < want {
        return Err(length_error());
    }
    let vol = lu.volume();
    let next = parse_mode_select(
        lu.mode(),
        sel.ten,
        &cmd.data_out[..want],
        vol.num_blocks(),
        vol.block_size(),
    )?;
    if lu.set_mode(next) {
        lu.control()
            .raise_all(Notice::ModeParametersChanged, Some(cmd.nexus))
            .await;
    }
    Ok(())
}

/// Puts the mode parameters back to their defaults (LOGICAL UNIT RESET):
/// there are no saved values to restore.
pub fn reset(lu: &LogicalUnit) {
    lu.set_mode(ModeParams::default());
}
