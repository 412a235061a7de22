// The TipTap side of the tiptap interop tests: the extensions a web editor built on StarterKit
// loads (StarterKit, TaskList, TaskItem, Table*, Image; Link and Underline come with StarterKit 3),
// their schema (@tiptap/core getSchema), @tiptap/markdown's MarkdownManager over them, and a
// headless editor (happy-dom) bound to a Y.Doc with TipTap's own Collaboration extension.
import { getSchema } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import { TaskList, TaskItem } from '@tiptap/extension-list'
import { Table, TableRow, TableHeader, TableCell } from '@tiptap/extension-table'
import Image from '@tiptap/extension-image'
import { MarkdownManager } from '@tiptap/markdown'

// nested task items (TaskItem's `nested: true`), so task lists can nest as bullet lists do
export const extensions = [StarterKit.configure({ undoRedo: false }), TaskList, TaskItem.configure({ nested: true }),
  Table, TableRow, TableHeader, TableCell, Image]
export const schema = getSchema(extensions)
export const markdown = new MarkdownManager({ extensions })

// ProseMirror JSON as the schema makes it: default attributes filled in, marks in rank order
export const normalize = (json) => schema.nodeFromJSON(json).toJSON()

// a TipTap editor without a browser: happy-dom provides the DOM, TipTap's Collaboration extension
// binds the fragment `default` of `ydoc`
export async function headlessEditor (ydoc) {
  const { Window } = await import('happy-dom')
  if (!globalThis.window) {
    const win = new Window()
    globalThis.window = win
    for (const k of ['document', 'navigator', 'Node', 'Element', 'HTMLElement', 'MutationObserver',
      'getComputedStyle', 'DOMParser', 'Text', 'DocumentFragment', 'KeyboardEvent', 'Event']) {
      if (!(k in globalThis) || globalThis[k] === undefined) globalThis[k] = win[k]
    }
  }
  const { Editor } = await import('@tiptap/core')
  const Collaboration = (await import('@tiptap/extension-collaboration')).default
  return new Editor({
    element: globalThis.document.createElement('div'),
    extensions: [...extensions, Collaboration.configure({ document: ydoc, field: 'default' })]
  })
}
