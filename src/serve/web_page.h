// The chat page served at `/`: one self-contained HTML file (no external assets) that talks
// to /v1/chat/completions with streaming and shows R1-style reasoning apart from the answer.
#pragma once

namespace dsv3::serve {

extern const char* const kWebPage;

}  // namespace dsv3::serve
