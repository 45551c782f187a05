"""Deterministic speech synthesis with eSpeak NG (the demo has no recorded speech).

The library and its voice data come from the `espeakng-loader` wheel, so no system package
is needed; eSpeak NG is driven through its C API in synchronous mode. Output is 16 kHz mono
float32 (eSpeak speaks at 22.05 kHz; resampled with soxr).
"""

from __future__ import annotations

import bisect
import ctypes
import re
import threading
from dataclasses import dataclass

import numpy as np
import soxr

TARGET_RATE = 16_000

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
# espeak_EVENT types: the list's terminator, the start of a word.
_EVENT_END_OF_LIST, _EVENT_WORD = 0, 1


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h). `sample`: the event's position in the utterance's audio, in native samples."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """One speaker: an eSpeak voice name with variant (e.g. `en-us+f3`), words per minute, pitch 0-99."""

    name: str
    rate_wpm: int = 160
    pitch: int = 50

    @property
    def key(self) -> str:
        return f"{self.name}@{self.rate_wpm}wpm@p{self.pitch}"

    @classmethod
    def from_key(cls, key: str) -> "Voice":
        name, rate, pitch = key.split("@")
        return cls(name, int(rate.removesuffix("wpm")), int(pitch.removeprefix("p")))


class ESpeakSynthesizer:
    """Process-wide eSpeak NG engine (the C library keeps global state, hence the lock)."""

    _lock = threading.Lock()
    _library = None
    _native_rate = None

    def __init__(self):
        with self._lock:
            if ESpeakSynthesizer._library is None:
                ESpeakSynthesizer._library, ESpeakSynthesizer._native_rate = _load_espeak()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []  # word events: (text_position, sample)
        self._callback = _CALLBACK(self._collect)

    def _collect(self, samples, count, events):
        index = 0
        while events and events[index].type != _EVENT_END_OF_LIST:
            event = events[index]
            if event.type == _EVENT_WORD:
                self._events.append((event.text_position, event.sample))
            index += 1
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: Voice, seed: int = 0) -> np.ndarray:
        """Return 16 kHz mono float32 audio in [-1, 1] for `text` spoken by `voice`."""
        return self.synthesize_timed(text, voice, seed)[0]

    def synthesize_timed(self, text: str, voice: Voice, seed: int = 0) -> tuple[np.ndarray, list]:
        """The audio of `synthesize` and, per whitespace word of `text`, [word, start_s, end_s] from eSpeak NG's
        own word events (see word_times)."""
        lib = self._library
        with self._lock:
            self._chunks, self._events = [], []
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
            lib.espeak_SetParameter(_PARAM_RATE, voice.rate_wpm, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
            lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            # eSpeak's waveform generator draws noise from its own RNG: reseed per utterance.
            lib.espeak_ng_SetRandSeed(seed)
            data = text.encode("utf-8") + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"eSpeak NG failed ({status}) on {text!r}")
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
            events, self._events = self._events, []
        native = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        audio = native.astype(np.float32) / 32768.0
        audio = soxr.resample(audio, self._native_rate, TARGET_RATE).astype(np.float32)
        return audio, word_times(text, events, self._native_rate, len(audio) / TARGET_RATE)


def word_times(text: str, events: list[tuple[int, int]], native_rate: int, duration_s: float) -> list:
    """[word, start_s, end_s] per whitespace word of `text`, from eSpeak NG's word events (text position, sample).
    A word starts at the first event inside it (eSpeak may split a written word, e.g. "twenty-three", into
    several) and ends where the next word starts (a pause after it is its own), the last at the end of the audio.
    An event between words belongs to the next word: after a sentence-final period eSpeak may put the next
    sentence's first word event on the space before it. eSpeak gives no event to an unstressed word it speaks
    joined to the word before ("in the city": "the" is spoken at the end of "in"'s span), so the words of such a
    group share the group's span by their letters (a word with none, e.g. "?!", gets no duration)."""
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    word_ends = [end for _, end, _ in spans]
    samples: list[list[int]] = [[] for _ in spans]
    for position, sample in events:
        index = bisect.bisect_right(word_ends, position - 1)  # the word holding 0-based char position - 1, or the next
        if index < len(spans):
            samples[index].append(sample)
    for index in range(1, len(spans)):
        # eSpeak sometimes puts a word's event inside the word before ("it is." -> both on "it"): a speakable word
        # without an event takes the previous word's later event.
        if not samples[index] and len(samples[index - 1]) > 1 and re.search(r"\w", spans[index][2]):
            samples[index].append(samples[index - 1].pop(samples[index - 1].index(max(samples[index - 1]))))
    heads = [index for index, inside in enumerate(samples) if inside]
    if not heads:
        return [[word, round(duration_s, 4), round(duration_s, 4)] for _, _, word in spans]
    times = []
    for number, head in enumerate(heads):
        # A group: a word with an event and the event-less words after it (before the first one: those too).
        first = 0 if number == 0 else head
        last = heads[number + 1] if number + 1 < len(heads) else len(spans)
        start = min(samples[head]) / native_rate
        end = min(samples[last]) / native_rate if last < len(spans) else duration_s
        times += split_span([word for _, _, word in spans[first:last]], start, max(start, end), head - first)
    return [[word, round(min(start, duration_s), 4), round(min(end, duration_s), 4)] for word, start, end in times]


def split_span(words: list[str], start: float, end: float, head: int) -> list[list]:
    """[word, start, end] for words spoken in one span, shared by their letters (all to the `head` word, the one
    eSpeak timed, when none has a letter)."""
    weights = [len(re.findall(r"\w", word)) for word in words]
    if not sum(weights):
        weights = [int(index == head) for index in range(len(words))]
    total, edges = sum(weights), [start]
    for weight in weights:
        edges.append(edges[-1] + (end - start) * weight / total)
    edges[-1] = end
    return [[word, edges[index], edges[index + 1]] for index, word in enumerate(words)]


def _load_espeak():
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise RuntimeError("eSpeak NG failed to initialize (espeakng-loader data path?)")
    return lib, rate


def pick_voice(utterance_id: str, voices: list[Voice], seed: int) -> Voice:
    """Deterministic, machine-independent voice choice for one utterance (no Python hash())."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{utterance_id}".encode()).digest()
    return voices[int.from_bytes(digest[:8], "little") % len(voices)]
