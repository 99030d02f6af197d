//! Still-image sources: EXIF orientation, the order of an image folder, unreadable images.

use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, Rgb, RgbImage};
use surveil_vision::source::images::load_image_frame;
use surveil_vision::source::{FrameQueue, ImageFolderSource, QueuePolicy, SingleImageSource};
use surveil_vision::{Frame, FrameSource, FrameSourceExt};

const RED: Rgb<u8> = Rgb([230, 20, 20]);
const GREEN: Rgb<u8> = Rgb([20, 200, 40]);

/// A JPEG of `img` (quality 100) with an EXIF APP1 segment holding only
/// `Orientation` (tag 0x0112, SHORT) = `orientation`, right after SOI. The TIFF block is
/// big-endian: "MM", 42, IFD0 at offset 8, one entry, next-IFD offset 0.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 100)
        .encode_image(img)
        .unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG starts with SOI");
    let mut tiff: Vec<u8> = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend(1u16.to_be_bytes());
    tiff.extend(0x0112u16.to_be_bytes());
    tiff.extend(3u16.to_be_bytes());
    tiff.extend(1u32.to_be_bytes());
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_be_bytes());
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend(((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend(b"Exif\x00\x00");
    app1.extend(tiff);
    [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
}

fn pixel(f: &Frame, x: u32, y: u32) -> [u8; 3] {
    let i = (y as usize * f.width as usize + x as usize) * 3;
    [f.data[i], f.data[i + 1], f.data[i + 2]]
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 180 && p[1] < 80 && p[2] < 80
}

fn is_green(p: [u8; 3]) -> bool {
    p[0] < 80 && p[1] > 150 && p[2] < 90
}

/// A 64x32 stored image, red in its top-left 32x16 quarter, green elsewhere, written with
/// EXIF orientation 6 ("rotate 90° clockwise to display"), 3 (180°) and 8 (90° counter-
/// clockwise). A stored pixel (x, y) of a W x H image is displayed at: 6 → (H-1-y, x),
/// 3 → (W-1-x, H-1-y), 8 → (y, W-1-x). So the red quarter is displayed top-right of a 32x64
/// image (6), bottom-right of a 64x32 image (3), bottom-left of a 32x64 image (8).
#[test]
fn exif_orientation_is_applied_on_decode() {
    let stored = RgbImage::from_fn(64, 32, |x, y| if x < 32 && y < 16 { RED } else { GREEN });
    let dir = tempfile::tempdir().unwrap();
    // (orientation, displayed size, a displayed pixel in the red quarter, one outside it)
    let cases = [
        (6u16, (32, 64), (24, 8), (8, 8)),
        (3, (64, 32), (48, 24), (8, 8)),
        (8, (32, 64), (8, 56), (24, 56)),
    ];
    for (orientation, (w, h), red_at, green_at) in cases {
        let path = dir.path().join(format!("photo_{orientation}.jpg"));
        std::fs::write(&path, jpeg_with_orientation(&stored, orientation)).unwrap();
        let f = load_image_frame(&path, 0, std::time::Duration::ZERO).unwrap();
        assert_eq!(
            (f.width, f.height),
            (w, h),
            "orientation {orientation}: displayed size"
        );
        let p = pixel(&f, red_at.0, red_at.1);
        assert!(is_red(p), "orientation {orientation}: {red_at:?} is {p:?}");
        let p = pixel(&f, green_at.0, green_at.1);
        assert!(
            is_green(p),
            "orientation {orientation}: {green_at:?} is {p:?}"
        );
        // The single-image source decodes through the same function.
        let mut single = SingleImageSource::open(&path).unwrap();
        let g = single.next_frame().unwrap().unwrap();
        assert_eq!((g.width, g.height), (w, h));
    }
    // Orientation 1 (or none) keeps the stored layout.
    let path = dir.path().join("upright.jpg");
    std::fs::write(&path, jpeg_with_orientation(&stored, 1)).unwrap();
    let f = load_image_frame(&path, 0, std::time::Duration::ZERO).unwrap();
    assert_eq!((f.width, f.height), (64, 32));
    assert!(is_red(pixel(&f, 8, 8)) && is_green(pixel(&f, 48, 24)));
}

/// A 2x2 PNG whose red channel is `n`.
fn write_numbered_png(path: &Path, n: u8) {
    RgbImage::from_pixel(2, 2, Rgb([n, 0, 0]))
        .save_with_format(path, ImageFormat::Png)
        .unwrap();
}

#[test]
fn an_image_folder_is_read_in_natural_name_order() {
    let dir = tempfile::tempdir().unwrap();
    // Written in a shuffled order, so the creation order cannot be what is tested.
    for n in [7u8, 12, 1, 10, 3, 11, 2, 9, 5, 4, 8, 6] {
        write_numbered_png(&dir.path().join(format!("frame{n}.png")), n);
    }
    let mut src = ImageFolderSource::open(dir.path(), 10.0).unwrap();
    let names: Vec<String> = src
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<String> = (1..=12).map(|n| format!("frame{n}.png")).collect();
    assert_eq!(names, expected);
    let frames: Vec<Frame> = src.frames().map(|f| f.unwrap()).collect();
    let reds: Vec<u8> = frames.iter().map(|f| f.data[0]).collect();
    assert_eq!(reds, (1..=12).collect::<Vec<u8>>(), "frame n is frameN.png");
    let indices: Vec<u64> = frames.iter().map(|f| f.index).collect();
    assert_eq!(indices, (0..12).collect::<Vec<u64>>());
    assert_eq!(
        frames[11].timestamp,
        std::time::Duration::from_millis(1100),
        "index / fps"
    );
}

/// frame1.png good, frame2.png corrupt (a PNG signature, then junk), frame3.png good.
fn folder_with_a_corrupt_image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_numbered_png(&dir.path().join("frame1.png"), 1);
    std::fs::write(
        dir.path().join("frame2.png"),
        b"\x89PNG\r\n\x1a\nthis is not a png",
    )
    .unwrap();
    write_numbered_png(&dir.path().join("frame3.png"), 3);
    dir
}

#[test]
fn a_corrupt_image_is_skipped_and_the_rest_analysed() {
    let dir = folder_with_a_corrupt_image();
    let mut src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    let frames: Vec<Frame> = src
        .frames()
        .collect::<surveil_vision::Result<_>>()
        .unwrap_or_else(|e| panic!("the good images are analysed: {e}"));
    // Frames keep their file's position (index) and time.
    let got: Vec<(u64, u8)> = frames.iter().map(|f| (f.index, f.data[0])).collect();
    assert_eq!(got, vec![(0, 1), (2, 3)]);
}

#[test]
fn the_skipped_image_is_counted_through_the_queue() {
    let dir = folder_with_a_corrupt_image();
    let mut src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    assert_eq!(src.skipped_frames(), 0);
    let frames: Vec<Frame> = src.frames().map(|f| f.unwrap()).collect();
    let n = frames.len();
    assert_eq!((n, src.skipped_frames()), (2, 1));

    // The queue runs the source on its own thread: the count comes back in its stats.
    let src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    let q = FrameQueue::spawn(Box::new(src), 4, QueuePolicy::Block).unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| q.recv())
        .map(|f| f.unwrap().index)
        .collect();
    assert_eq!(got, vec![0, 2]);
    let stats = q.stats();
    assert_eq!((stats.decoded, stats.skipped), (2, 1));
}

#[test]
fn a_folder_of_only_corrupt_images_fails_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b10.jpg"), b"\xff\xd8\xff junk").unwrap();
    std::fs::write(dir.path().join("b9.png"), b"").unwrap();
    let mut src = ImageFolderSource::open(dir.path(), 1.0).unwrap();
    let results: Vec<_> = src.frames().collect();
    assert_eq!(results.len(), 1, "one error, then the end");
    let e = results
        .into_iter()
        .next()
        .unwrap()
        .expect_err("no image decodes: an error")
        .to_string();
    // b9.png comes first in natural order; its cause is that it is empty.
    assert!(e.contains("b9.png") && e.contains("empty file"), "{e}");
    assert!(e.contains("none of which could be decoded"), "{e}");
    assert_eq!(src.skipped_frames(), 2);
}
