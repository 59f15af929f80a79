// centrifuge-js, JSON build, across tether restarts (disk engine; the memory-engine negative
// control runs here only).
import { CODECS } from './helpers.mjs';
import { defineRestartSuite } from './suite.mjs';

defineRestartSuite(CODECS.json, { extras: true });
