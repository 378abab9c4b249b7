// One rater's trials: fetch the next trial, show it, post the answer, repeat.
(() => {
  const root = document.getElementById('study');
  const token = root.dataset.token;
  const $ = (id) => document.getElementById(id);
  let current = null;  // The trial on screen.
  let shownAt = 0;     // performance.now() when all its images had loaded.
  let busy = false;

  function setProgress(answered, total) {
    $('bar').style.width = `${total ? (100 * answered) / total : 100}%`;
    $('counter').textContent = `${answered} of ${total} answered`;
  }

  function loaded(img) {
    return img.complete && img.naturalWidth > 0
      ? Promise.resolve()
      : new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; });
  }

  async function show(state) {
    setProgress(state.answered, state.total);
    if (state.done) {
      current = null;
      $('trial').hidden = true;
      $('done').hidden = false;
      return;
    }
    current = state.trial;
    const refs = $('refs');
    refs.replaceChildren(...current.references.map((src, i) => {
      const img = document.createElement('img');
      img.src = src;
      img.alt = `photo ${i + 1}`;
      return img;
    }));
    $('left').querySelector('img').src = current.left;
    $('right').querySelector('img').src = current.right;
    $('trial').hidden = false;
    const images = [...document.querySelectorAll('#trial img')];
    try {
      await Promise.all(images.map(loaded));
    } catch (e) {
      $('message').textContent = 'An image failed to load; reload the page.';
    }
    shownAt = performance.now();
    root.classList.remove('busy');
    busy = false;
  }

  async function next() {
    const response = await fetch(`/api/next/${encodeURIComponent(token)}`);
    const body = await response.json();
    if (!response.ok) {
      $('message').textContent = body.error;
      return;
    }
    await show(body);
  }

  async function answer(choice) {
    if (busy || !current) return;
    busy = true;
    root.classList.add('busy');
    const response = await fetch('/api/answer', {
      method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({
        token, trial: current.id, choice,
        response_ms: Math.max(0, Math.round(performance.now() - shownAt)),
      }),
    });
    if (!response.ok && response.status !== 409) {  // 409: answered already (another tab).
      const body = await response.json();
      $('message').textContent = body.error;
      root.classList.remove('busy');
      busy = false;
      return;
    }
    $('message').textContent = '';
    await next();
  }

  for (const id of ['left', 'right', 'tie']) {
    $(id).addEventListener('click', () => answer($(id).dataset.choice));
  }
  document.addEventListener('keydown', (event) => {
    const key = {ArrowLeft: 'left', ArrowRight: 'right', ArrowDown: 'tie'}[event.key];
    if (key) {
      event.preventDefault();
      answer(key);
    }
  });
  next();
})();
