// centrifuge-js, JSON build, across tether restarts (disk engine; the interval-mode case
// and the memory-engine negative control run here only).
import { CODECS } from './helpers.mjs';
import { defineRestartSuite } from './suite.mjs';

defineRestartSuite(CODECS.json, { extras: true });
