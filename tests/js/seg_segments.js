// Parse a DICOM-SEG with dcmjs, the DICOM library OHIF uses, and print what a viewer would
// find in it as JSON (used by tests/test_reporting.py).
//
//   node seg_segments.js SEG_FILE [SOURCE_FILE ...]
//
// Always: the segments of the SegmentSequence (number, label) and the SEG's type and frame
// count. With source files (the images the SEG references): dcmjs' Cornerstone adapter loads
// the SEG onto those images, as OHIF's SEG viewport does, and the voxel count of every segment
// and the number of source images each segment lands on are added.
"use strict";

const fs = require("fs");
const dcmjs = require("dcmjs");

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicom = DicomMessage.readFile(buffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicom.dict);
  return { buffer, dataset };
}

function asList(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

// One image id per frame of every source file, with the metadata the adapter asks for.
function sourceImages(paths) {
  const imageIds = [];
  const metadata = new Map();
  for (const path of paths) {
    const ds = readDataset(path).dataset;
    const frames = Number(ds.NumberOfFrames || 1);
    const perFrame = asList(ds.PerFrameFunctionalGroupsSequence);
    const shared = asList(ds.SharedFunctionalGroupsSequence)[0] || {};
    for (let f = 0; f < frames; f++) {
      const group = perFrame[f] || {};
      const pick = (name) => asList(group[name])[0] || asList(shared[name])[0] || {};
      const position = frames > 1 ? pick("PlanePositionSequence").ImagePositionPatient
        : ds.ImagePositionPatient;
      const orientation = frames > 1 ? pick("PlaneOrientationSequence").ImageOrientationPatient
        : ds.ImageOrientationPatient;
      // Cornerstone image ids carry 0-based frame numbers after "frame=".
      const imageId = frames > 1 ? `file:${path}?frame=${f}` : `file:${path}`;
      imageIds.push(imageId);
      metadata.set(imageId, {
        imagePlaneModule: {
          rows: ds.Rows,
          columns: ds.Columns,
          rowCosines: orientation.slice(0, 3).map(Number),
          columnCosines: orientation.slice(3, 6).map(Number),
          imagePositionPatient: position.map(Number),
        },
        imagePixelModule: { rows: ds.Rows, columns: ds.Columns },
        generalSeriesModule: { seriesInstanceUID: ds.SeriesInstanceUID },
        sopCommonModule: { sopInstanceUID: ds.SOPInstanceUID, sopClassUID: ds.SOPClassUID },
        instance: {
          ImagePositionPatient: position.map(Number),
          FrameOfReferenceUID: ds.FrameOfReferenceUID,
          SeriesInstanceUID: ds.SeriesInstanceUID,
        },
        frameNumber: f + 1,
      });
    }
  }
  const provider = { get: (type, imageId) => (metadata.get(imageId) || {})[type] };
  return { imageIds, provider };
}

function loadOntoSources(buffer, sourcePaths) {
  const { imageIds, provider } = sourceImages(sourcePaths);
  const state = dcmjs.adapters.Cornerstone.Segmentation.generateToolState(
    imageIds, buffer, provider,
  );
  const voxels = {};
  for (const labelmap of state.labelmapBufferArray) {
    for (const value of new Uint16Array(labelmap)) {
      if (value !== 0) voxels[value] = (voxels[value] || 0) + 1;
    }
  }
  const images = {};
  for (const onFrame of state.segmentsOnFrame) {
    for (const number of new Set(asList(onFrame))) images[number] = (images[number] || 0) + 1;
  }
  return { voxels, images, source_images: imageIds.length };
}

function main() {
  const [segPath, ...sourcePaths] = process.argv.slice(2);
  if (!segPath) {
    console.error("usage: node seg_segments.js SEG_FILE [SOURCE_FILE ...]");
    process.exit(2);
  }
  const { buffer, dataset } = readDataset(segPath);
  const result = {
    sop_class_uid: dataset.SOPClassUID,
    segmentation_type: dataset.SegmentationType,
    number_of_frames: Number(dataset.NumberOfFrames),
    segments: asList(dataset.SegmentSequence).map((s) => ({
      number: Number(s.SegmentNumber),
      label: s.SegmentLabel,
    })),
  };
  if (sourcePaths.length) Object.assign(result, loadOntoSources(buffer, sourcePaths));
  process.stdout.write(JSON.stringify(result) + "\n");
}

main();
