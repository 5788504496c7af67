//! Block copy between volumes in bounded chunks: the data mover behind
//! EXTENDED COPY and, later, point-in-time copies.

use crate::error::EngineError;
use crate::volume::Volume;

/// Largest chunk one copy step moves, so a long copy never holds a huge
/// buffer.
pub const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// Copies `blocks` from `src` at `src_lba` to `dst` at `dst_lba`. Both
/// volumes must share a block size. Each chunk is read, then written under
/// the destination's range lock like any other write. Within one volume,
/// an overlapping copy to a higher LBA runs backwards so it never reads
/// blocks it already overwrote (memmove semantics). On error, returns how
/// many blocks were copied (counted from the end when running backwards)
/// with the error.
pub async fn copy_blocks(
    src: &Volume,
    src_lba: u64,
    dst: &Volume,
    dst_lba: u64,
    blocks: u64,
) -> Result<(), (u64, EngineError)> {
    let bs = src.block_size() as u64;
    if dst.block_size() as u64 != bs {
        return Err((
            0,
            EngineError::BadLength {
                got: dst.block_size() as usize,
                expected: bs as usize,
            },
        ));
    }
    src.check_range(src_lba, blocks).map_err(|e| (0, e))?;
    dst.check_range(dst_lba, blocks).map_err(|e| (0, e))?;
    let chunk = (COPY_CHUNK_BYTES / bs).max(1);
    let backwards = std::ptr::eq(src, dst) && dst_lba > src_lba && dst_lba < src_lba + blocks;
    let mut done = 0u64;
    while done < blocks {
        let n = (blocks - done).min(chunk);
        let off = if backwards { blocks - done - n } else { done };
        let data = src.read(src_lba + off, n).await.map_err(|e| (done, e))?;
        dst.write(dst_lba + off, data, false)
            .await
            .map_err(|e| (done, e))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use bytes::Bytes;
    use std::sync::Arc;

    #[tokio::test]
    async fn copies_across_chunks_and_checks_ranges() {
        let a = Volume::simple("a", Arc::new(MemBackend::new(8192 * 512).unwrap()), 512);
        let b = Volume::simple("b", Arc::new(MemBackend::new(8192 * 512).unwrap()), 512);
        let pattern: Vec<u8> = (0..3000 * 512).map(|i| (i / 512) as u8).collect();
        a.write(5, Bytes::from(pattern.clone()), false)
            .await
            .unwrap();
        copy_blocks(&a, 5, &b, 100, 3000).await.unwrap();
        assert_eq!(&b.read(100, 3000).await.unwrap()[..], &pattern[..]);
        assert!(copy_blocks(&a, 8000, &b, 0, 500).await.is_err());
        // Overlapping within one volume, both directions, across chunks.
        copy_blocks(&a, 5, &a, 1005, 3000).await.unwrap();
        assert_eq!(&a.read(1005, 3000).await.unwrap()[..], &pattern[..]);
        copy_blocks(&a, 1005, &a, 6, 3000).await.unwrap();
        assert_eq!(&a.read(6, 3000).await.unwrap()[..], &pattern[..]);
        assert!(copy_blocks(&a, 0, &b, 8000, 500).await.is_err());
    }
}
