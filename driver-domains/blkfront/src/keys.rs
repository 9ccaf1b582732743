//! The backend's xenbus keys a block frontend reads (names from `public/io/blkif.h`). The
//! backend engine (`blkback::negotiate`) writes them with these same constants.

/// Backend: size in units of `sector-size`.
pub const SECTORS: &str = "sectors";
/// Backend: `VDISK_*` flags.
pub const INFO: &str = "info";
/// Backend: logical sector size.
pub const SECTOR_SIZE: &str = "sector-size";
/// Backend: FLUSH_DISKCACHE supported.
pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
/// Backend: DISCARD supported.
pub const FEATURE_DISCARD: &str = "feature-discard";
/// Backend: most segments in an indirect request.
pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
/// `VDISK_READONLY` in `info`.
pub const VDISK_READONLY: u32 = 4;
