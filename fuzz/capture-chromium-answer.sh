#!/usr/bin/env bash
# Captures a real Chromium SDP answer to one of our offers, for the
# sdp_answer seed corpus. The page answers the way web/call.js does: its
# camera and microphone on the two recvonly transceivers (sendonly), three
# simulcast layers on the camera, then createAnswer.
#
#   SPREEKKAMER_FUZZ_OFFER_OUT=/tmp/offer.sdp fuzz/target/x86_64-unknown-linux-gnu/release/sdp_answer -runs=1
#   fuzz/capture-chromium-answer.sh /tmp/offer.sdp > fuzz/corpus/sdp_answer/chromium-simulcast-answer.sdp
set -euo pipefail
offer=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$offer" "$dir/page.html" <<'PY'
import json, sys
offer = open(sys.argv[1]).read()
open(sys.argv[2], "w").write("""<!doctype html><pre id=out>pending</pre><script>
(async () => {
  const out = document.getElementById('out');
  try {
    const pc = new RTCPeerConnection();
    await pc.setRemoteDescription({ type: 'offer', sdp: %s });
    const canvas = document.createElement('canvas');
    canvas.width = 1280; canvas.height = 720;
    canvas.getContext('2d').fillRect(0, 0, 10, 10);
    const video = canvas.captureStream(30).getVideoTracks()[0];
    const ac = new AudioContext();
    const osc = ac.createOscillator();
    const dest = ac.createMediaStreamDestination();
    osc.connect(dest); osc.start();
    const audio = dest.stream.getAudioTracks()[0];
    const used = {};
    for (const tr of pc.getTransceivers()) {
      const kind = tr.receiver.track.kind;
      if (used[kind] || tr.direction !== 'sendrecv' && tr.direction !== 'recvonly') continue;
      if (tr.currentDirection !== null) continue;
      used[kind] = true;
      tr.direction = 'sendonly';
      await tr.sender.replaceTrack(kind === 'audio' ? audio : video);
    }
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    out.textContent = 'SDP-BEGIN' + pc.localDescription.sdp + 'SDP-END';
  } catch (e) { out.textContent = 'ERROR ' + e; }
})();
</script>""" % json.dumps(offer))
PY
chromium --headless=new --no-sandbox --disable-gpu --virtual-time-budget=10000 \
  --dump-dom "file://$dir/page.html" 2>/dev/null |
  python3 -c 'import sys,html; d=html.unescape(sys.stdin.read()); a=d.find("SDP-BEGIN"); b=d.find("SDP-END");
sys.exit("no answer: " + d[-400:]) if a < 0 or b < 0 else sys.stdout.write(d[a+9:b].replace("\r\n","\n").replace("\n","\r\n"))'
